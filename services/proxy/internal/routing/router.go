// Package routing chooses a backend for a request and reserves its slot in
// one step, and queues requests fairly when every candidate is full.
//
// A slot is one in-flight request on one (backend, model). Each backend caps
// its slots per model (normally OLLAMA_NUM_PARALLEL). Choice order among
// candidates with a free slot: model already loaded, then fewest in-flight
// for that model, then fewest in-flight on the whole backend, then higher
// weight, then the order given. When no candidate has a free slot the
// request waits in a FIFO queue, bounded in length and in time; a released
// slot goes to the oldest waiter that can use it.
package routing

import (
	"container/list"
	"context"
	"errors"
	"sync"
	"time"
)

var (
	// ErrQueueFull means the waiting queue is at its length bound.
	ErrQueueFull = errors.New("server busy, please try again.  maximum pending requests exceeded")
	// ErrQueueTimeout means the request waited its bound without a slot.
	ErrQueueTimeout = errors.New("server busy, please try again.  timed out waiting for a free slot")
	// ErrNoCandidates means the caller passed no candidates.
	ErrNoCandidates = errors.New("no backend can serve this model")
)

// Key names one slot pool.
type Key struct {
	Backend string
	Model   string
}

// Candidate is a backend that can serve the request, with what the router
// needs to rank it.
type Candidate struct {
	Key
	Cap    int  // slots for this model on this backend
	Loaded bool // the model is loaded there now
	Weight int
}

// Remote reports load that other replicas hold on a key, so that caps hold
// across the fleet. Implementations must be fast and never block.
type Remote interface {
	InFlight(k Key) int
	BackendInFlight(backend string) int
}

// Options bound the queue.
type Options struct {
	MaxQueue int
	MaxWait  time.Duration
	// Observe, if set, receives how long each granted or refused request
	// waited and whether it queued at all.
	Observe func(wait time.Duration, queued bool, err error)
	// LockWait, if set, receives how long each acquisition of the router's
	// lock waited (the seed asks for lock-contention metrics).
	LockWait func(time.Duration)
	// Changed, if set, is called (under the router's lock, so it must not
	// block) after every reserve and release, so counts can be shared.
	Changed func()
}

// Router owns every slot count on this replica.
type Router struct {
	opts   Options
	remote Remote

	mu       sync.Mutex     // guards inflight, backend, waiters
	inflight map[Key]int    // local in-flight per (backend, model)
	backend  map[string]int // local in-flight per backend
	waiters  *list.List     // of *waiter, oldest first
}

type waiter struct {
	cands []Candidate
	grant chan *Slot // buffered 1; receives the slot when granted
}

// New returns an empty router. remote may be nil.
func New(opts Options, remote Remote) *Router {
	return &Router{opts: opts, remote: remote, inflight: map[Key]int{}, backend: map[string]int{}, waiters: list.New()}
}

// Slot is a reserved place on one backend for one model. Release it exactly
// once; further calls do nothing.
type Slot struct {
	Key
	r    *Router
	once sync.Once
}

// Release frees the slot and hands it to the oldest waiter that can use it.
func (s *Slot) Release() {
	s.once.Do(func() { s.r.release(s.Key) })
}

// Acquire picks the best candidate with a free slot and reserves it, or
// waits in the queue. The returned error is ErrQueueFull, ErrQueueTimeout,
// ErrNoCandidates or the context's error.
func (r *Router) Acquire(ctx context.Context, cands []Candidate) (*Slot, error) {
	if len(cands) == 0 {
		return nil, ErrNoCandidates
	}
	start := time.Now()
	r.lock(start)
	if c, ok := r.pickLocked(cands); ok {
		s := r.reserveLocked(c.Key)
		r.mu.Unlock()
		r.observe(start, false, nil)
		return s, nil
	}
	if r.waiters.Len() >= r.opts.MaxQueue {
		r.mu.Unlock()
		r.observe(start, false, ErrQueueFull)
		return nil, ErrQueueFull
	}
	w := &waiter{cands: cands, grant: make(chan *Slot, 1)}
	elem := r.waiters.PushBack(w)
	r.mu.Unlock()

	timer := time.NewTimer(r.opts.MaxWait)
	defer timer.Stop()
	var err error
	select {
	case s := <-w.grant:
		r.observe(start, true, nil)
		return s, nil
	case <-timer.C:
		err = ErrQueueTimeout
	case <-ctx.Done():
		err = ctx.Err()
	}
	r.mu.Lock()
	select {
	case s := <-w.grant:
		// Granted while we were giving up: give it back (to the next waiter).
		r.mu.Unlock()
		s.Release()
	default:
		r.waiters.Remove(elem)
		r.mu.Unlock()
	}
	r.observe(start, true, err)
	return nil, err
}

// lock takes r.mu, reporting the wait when asked to. since is when the
// caller started waiting (zero: now).
func (r *Router) lock(since time.Time) {
	if r.opts.LockWait == nil {
		r.mu.Lock()
		return
	}
	if since.IsZero() {
		since = time.Now()
	}
	r.mu.Lock()
	r.opts.LockWait(time.Since(since))
}

func (r *Router) observe(start time.Time, queued bool, err error) {
	if r.opts.Observe != nil {
		r.opts.Observe(time.Since(start), queued, err)
	}
}

// pickLocked ranks candidates that have a free slot.
func (r *Router) pickLocked(cands []Candidate) (Candidate, bool) {
	var best Candidate
	var bestIn, bestTotal int
	found := false
	for _, c := range cands {
		in := r.inflight[c.Key]
		total := r.backend[c.Backend]
		if r.remote != nil {
			in += r.remote.InFlight(c.Key)
			total += r.remote.BackendInFlight(c.Backend)
		}
		if in >= c.Cap {
			continue
		}
		if !found || better(c, in, total, best, bestIn, bestTotal) {
			best, bestIn, bestTotal, found = c, in, total, true
		}
	}
	return best, found
}

func better(c Candidate, in, total int, b Candidate, bIn, bTotal int) bool {
	if c.Loaded != b.Loaded {
		return c.Loaded
	}
	if in != bIn {
		return in < bIn
	}
	if total != bTotal {
		return total < bTotal
	}
	return c.Weight > b.Weight
}

func (r *Router) reserveLocked(k Key) *Slot {
	r.inflight[k]++
	r.backend[k.Backend]++
	if r.opts.Changed != nil {
		r.opts.Changed()
	}
	return &Slot{Key: k, r: r}
}

func (r *Router) release(k Key) {
	r.lock(time.Time{})
	defer r.mu.Unlock()
	if r.inflight[k]--; r.inflight[k] <= 0 {
		delete(r.inflight, k)
	}
	if r.backend[k.Backend]--; r.backend[k.Backend] <= 0 {
		delete(r.backend, k.Backend)
	}
	if r.opts.Changed != nil {
		r.opts.Changed()
	}
	r.grantLocked()
}

// grantLocked serves waiters oldest first while any of them fits.
func (r *Router) grantLocked() {
	for e := r.waiters.Front(); e != nil; {
		next := e.Next()
		w := e.Value.(*waiter)
		if c, ok := r.pickLocked(w.cands); ok {
			r.waiters.Remove(e)
			w.grant <- r.reserveLocked(c.Key)
		}
		e = next
	}
}

// Recheck grants waiters after capacity changed outside Release (remote
// replicas released slots, or a cap was raised).
func (r *Router) Recheck() {
	r.mu.Lock()
	r.grantLocked()
	r.mu.Unlock()
}

// InFlight returns this replica's counts per backend and model.
func (r *Router) InFlight() map[string]map[string]int {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make(map[string]map[string]int, len(r.backend))
	for k, n := range r.inflight {
		if out[k.Backend] == nil {
			out[k.Backend] = map[string]int{}
		}
		out[k.Backend][k.Model] = n
	}
	return out
}

// QueueLen is the number of waiting requests.
func (r *Router) QueueLen() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.waiters.Len()
}
