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
//
// Other replicas' counts arrive late, so each replica has a share of every
// cap (Share) and the others count as holding theirs while they have demand
// (Reserved). Beyond its share a replica borrows only where the fleet view
// shows room, only after its own demand has been visible for a BorrowGap,
// and one slot per gap, so replicas that race for the same free slot
// overshoot by at most one slot each.
type Remote interface {
	// InFlight and BackendInFlight are the others' latest counts, for
	// ranking.
	InFlight(k Key) int
	BackendInFlight(backend string) int
	// Reserved is what the others hold of cap on k: each holds its
	// in-flight count, or, while it has requests waiting, at least its
	// share of cap.
	Reserved(k Key, cap int) int
	// Share is how many of cap slots this replica may use on its own.
	Share(k Key, cap int) int
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
	// BorrowGap spaces borrowed slots beyond this replica's share (default
	// 10ms: time for a change message to reach the other replicas, fleet
	// sync's 2ms spacing between messages included).
	BorrowGap time.Duration
}

// Router owns every slot count on this replica.
type Router struct {
	opts   Options
	remote Remote

	mu       sync.Mutex        // guards inflight, backend, waiters
	inflight map[Key]int       // local in-flight per (backend, model)
	backend  map[string]int    // local in-flight per backend
	waiters  *list.List        // of *waiter, oldest first
	borrowed map[Key]time.Time // last slot taken beyond this replica's share
	busy     map[Key]time.Time // since when this replica has had demand for a key
}

type waiter struct {
	cands []Candidate
	grant chan *Slot // buffered 1; receives the slot when granted
}

// New returns an empty router. remote may be nil.
func New(opts Options, remote Remote) *Router {
	if opts.BorrowGap == 0 {
		opts.BorrowGap = 10 * time.Millisecond
	}
	return &Router{opts: opts, remote: remote, inflight: map[Key]int{}, backend: map[string]int{}, waiters: list.New(), borrowed: map[Key]time.Time{}, busy: map[Key]time.Time{}}
}

// Slot is a reserved place on one backend for one model. Release it exactly
// once; further calls do nothing.
type Slot struct {
	Key
	// Loaded is whether the router believed the model loaded there.
	Loaded bool
	r      *Router
	once   sync.Once
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
	if c, ok := r.pickLocked(cands, start); ok {
		s := r.reserveLocked(c, start)
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
func (r *Router) pickLocked(cands []Candidate, now time.Time) (Candidate, bool) {
	var best Candidate
	var bestIn, bestTotal int
	found := false
	for _, c := range cands {
		local := r.inflight[c.Key]
		in, total := local, r.backend[c.Backend]
		if r.remote != nil {
			if local+r.remote.Reserved(c.Key, c.Cap) >= c.Cap {
				continue
			}
			if local >= r.remote.Share(c.Key, c.Cap) && !r.mayBorrowLocked(c.Key, now) {
				continue
			}
			in += r.remote.InFlight(c.Key)
			total += r.remote.BackendInFlight(c.Backend)
		} else if in >= c.Cap {
			continue
		}
		if !found || better(c, in, total, best, bestIn, bestTotal) {
			best, bestIn, bestTotal, found = c, in, total, true
		}
	}
	return best, found
}

// mayBorrowLocked allows a slot beyond this replica's share only once its
// demand has been visible to the others for a borrow gap (so that a burst
// hitting every replica at once is met with shares, not borrowing), and no
// more than one borrowed slot per gap.
func (r *Router) mayBorrowLocked(k Key, now time.Time) bool {
	since, ok := r.busy[k]
	if !ok {
		r.busy[k] = now
		return false
	}
	return now.Sub(since) >= r.opts.BorrowGap && now.Sub(r.borrowed[k]) >= r.opts.BorrowGap
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

func (r *Router) reserveLocked(c Candidate, now time.Time) *Slot {
	k := c.Key
	if _, ok := r.busy[k]; !ok {
		r.busy[k] = now
	}
	if r.remote != nil && r.inflight[k] >= r.remote.Share(k, c.Cap) {
		r.borrowed[k] = now
	}
	r.inflight[k]++
	r.backend[k.Backend]++
	if r.opts.Changed != nil {
		r.opts.Changed()
	}
	return &Slot{Key: k, Loaded: c.Loaded, r: r}
}

func (r *Router) release(k Key) {
	now := time.Now()
	r.lock(now)
	defer r.mu.Unlock()
	if r.inflight[k]--; r.inflight[k] <= 0 {
		delete(r.inflight, k)
		if r.waiters.Len() == 0 {
			delete(r.busy, k) // idle again: the next burst starts with shares
		}
	}
	if r.backend[k.Backend]--; r.backend[k.Backend] <= 0 {
		delete(r.backend, k.Backend)
	}
	if r.opts.Changed != nil {
		r.opts.Changed()
	}
	r.grantLocked(now)
}

// grantLocked serves waiters oldest first while any of them fits.
func (r *Router) grantLocked(now time.Time) {
	for e := r.waiters.Front(); e != nil; {
		next := e.Next()
		w := e.Value.(*waiter)
		if c, ok := r.pickLocked(w.cands, now); ok {
			r.waiters.Remove(e)
			w.grant <- r.reserveLocked(c, now)
		}
		e = next
	}
}

// Recheck grants waiters after capacity changed outside Release (remote
// replicas released slots, or a cap was raised).
func (r *Router) Recheck() {
	now := time.Now()
	r.lock(now)
	r.grantLocked(now)
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

// Load is one key's local in-flight count and demand (in-flight plus
// requests waiting that could use it).
type Load struct{ InFlight, Demand int }

// Loads returns this replica's load per key, for sharing with the others.
// A waiter counts as demand on every key it could use.
func (r *Router) Loads() map[Key]Load {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make(map[Key]Load, len(r.inflight))
	for k, n := range r.inflight {
		out[k] = Load{InFlight: n, Demand: n}
	}
	for e := r.waiters.Front(); e != nil; e = e.Next() {
		for _, c := range e.Value.(*waiter).cands {
			l := out[c.Key]
			l.Demand++
			out[c.Key] = l
		}
	}
	return out
}

// QueueLen is the number of waiting requests.
func (r *Router) QueueLen() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.waiters.Len()
}
