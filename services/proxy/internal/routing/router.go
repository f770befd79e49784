// Package routing chooses a backend for a request and reserves its slot in
// one step, and queues requests fairly when every candidate is full.
//
// A slot is one in-flight request on one (backend, model). Each backend caps
// its slots per model (normally OLLAMA_NUM_PARALLEL). Options.Strategy
// orders the candidates with a free slot (affinity.go, docs/routing.md);
// LeastLoaded, the zero value: model already loaded, then fewest in-flight
// for that model, then fewest in-flight on the whole backend, then higher
// weight, then the order given. Prefix puts the candidate holding the
// request's cached prompt prefix first, within a load bound. When no
// candidate has a free slot the
// request waits, bounded in number (overall and per key) and in time. A
// released slot goes to the highest priority class with a waiter that can
// use it; within a class, keys share the slots by weight (weighted fair
// queuing over held slots, fleet-wide: fair.go); within one key, oldest
// first. See docs/limits.md, the queue.
package routing

import (
	"container/list"
	"context"
	"errors"
	"sync"
	"time"

	"github.com/droverhq/drover/services/proxy/internal/affinity"
)

var (
	// ErrQueueFull means the waiting queue is at its length bound.
	ErrQueueFull = errors.New("server busy, please try again.  maximum pending requests exceeded")
	// ErrKeyQueueFull means the key's own waiters are at the per-key
	// bound; it is also ErrQueueFull (errors.Is), and answered alike.
	ErrKeyQueueFull error = keyQueueFull{}
	// ErrQueueTimeout means the request waited its bound without a slot.
	ErrQueueTimeout = errors.New("server busy, please try again.  timed out waiting for a free slot")
	// ErrNoCandidates means the caller passed no candidates.
	ErrNoCandidates = errors.New("no backend can serve this model")
)

type keyQueueFull struct{}

func (keyQueueFull) Error() string {
	return "server busy, please try again.  maximum pending requests for this API key exceeded"
}
func (keyQueueFull) Is(target error) bool { return target == ErrQueueFull }

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

// Remote reports load that other replicas hold on a key, so that caps,
// classes and weights hold across the fleet. Implementations must be fast
// and never block.
//
// Other replicas' counts arrive late, so each replica has a share of every
// cap (Share). Beyond its share a replica borrows only where the fleet plan
// leaves room, only after its own demand has been visible for a BorrowGap,
// and one slot per gap, so replicas that race for the same free slot
// overshoot by at most one slot each.
type Remote interface {
	// InFlight and BackendInFlight are the others' latest counts, for
	// ranking.
	InFlight(k Key) int
	BackendInFlight(backend string) int
	// Peers are the others' latest loads on k, per queue.
	Peers(k Key) []PeerLoad
	// Rank is this replica's place among the live replicas, by name.
	Rank() int
	// ShareOf is the share of k's cap of the replica ranked rank.
	ShareOf(k Key, rank, cap int) int
	// Share is how many of cap slots this replica may use on its own.
	Share(k Key, cap int) int
}

// Options bound the queue.
type Options struct {
	MaxQueue int
	// MaxPerKey bounds one key's waiters on this replica (0: only
	// MaxQueue).
	MaxPerKey int
	MaxWait   time.Duration
	// InteractiveHeadroom is how many slots of a model batch waiters leave
	// free while interactive requests are about (headroom.go).
	InteractiveHeadroom int
	// InteractivePeak makes batch waiters also leave free what interactive
	// requests held or waited for at their peak in the last PeakWindow,
	// beyond what they hold now (headroom.go).
	InteractivePeak bool
	// BatchMinSlots is how many slots of a model the headroom and the peak
	// never keep from batch waiters (0: all may be kept).
	BatchMinSlots int
	// Observe, if set, receives how long each granted or refused request
	// waited and whether it queued at all.
	Observe func(wait time.Duration, queued bool, err error)
	// LockWait, if set, receives how long each acquisition of the router's
	// lock waited (the seed asks for lock-contention metrics).
	LockWait func(time.Duration)
	// Changed, if set, is called (under the router's lock, so it must not
	// block) after every reserve, release and change of the queue, so
	// loads can be shared.
	Changed func()
	// BorrowGap spaces borrowed slots beyond this replica's share (default
	// 10ms: time for a change message to reach the other replicas, fleet
	// sync's 2ms spacing between messages included).
	BorrowGap time.Duration
	// Strategy ranks the candidates with a free slot (default
	// LeastLoaded); Prefix and Session need Affinity (affinity.go).
	Strategy Strategy
	Affinity *Affinity
}

// Router owns every slot count and waiter on this replica.
type Router struct {
	opts   Options
	remote Remote

	mu       sync.Mutex                    // guards every field below
	inflight map[Key]int                   // local in-flight per (backend, model)
	backend  map[string]int                // local in-flight per backend
	pools    map[Key]map[queueID]*poolLoad // local in-flight and waiters per (backend, model) and queue
	waiters  *list.List                    // of *waiter, oldest first
	perKey   map[string]int                // waiters per key id
	recent   map[queueID]*decaying         // recent grants per queue
	borrowed map[Key]time.Time             // last slot taken beyond this replica's share
	busy     map[Key]time.Time             // since when this replica has had demand for a key
	// published is each queue's load per (backend, model) as last handed
	// to the fleet (Loads): the plan's view of this replica that the
	// others share.
	published map[Key]map[queueID]poolLoad
	wake      *time.Timer      // runs onWake at wakeAt
	wakeAt    time.Time        // zero: no wake pending
	keep      headroom         // the slots batch leaves to interactive requests
	tokens    map[string]int64 // local estimated tokens in flight per backend
	turn      uint64           // RoundRobin's next turn
	ranks     []ranked         // pickLocked's scratch
}

// poolLoad is one queue's local load on one (backend, model).
type poolLoad struct {
	weight int
	n, w   int   // in flight, waiting
	oldest int64 // in published: TenantLoad.Oldest as handed out
}

type waiter struct {
	at    time.Time // arrival, for first come, first served across replicas
	who   Tenant
	q     queueID
	cands []Candidate
	grant chan *Slot // buffered 1; receives the slot when granted
	// aff is each candidate's affinity (nil: the strategy ignores it),
	// and rank computes it again for a waiter that queued (nil: never);
	// tokens the request's estimated tokens; choice what ranking decided.
	aff    []affinity.Match
	rank   func(time.Time) []affinity.Match
	queued bool // found no slot it could take on arrival: waits in the queue
	tokens int64
	home   uint64         // the prompt's home key (affinity.go; 0: none)
	warm   *affinity.Warm // its wait for a warm slot (nil: none)
	choice choice
}

// New returns an empty router. remote may be nil.
func New(opts Options, remote Remote) *Router {
	if opts.BorrowGap == 0 {
		opts.BorrowGap = 10 * time.Millisecond
	}
	return &Router{opts: opts, remote: remote, inflight: map[Key]int{}, backend: map[string]int{}, pools: map[Key]map[queueID]*poolLoad{},
		waiters: list.New(), perKey: map[string]int{}, published: map[Key]map[queueID]poolLoad{}, recent: map[queueID]*decaying{}, borrowed: map[Key]time.Time{}, busy: map[Key]time.Time{}, tokens: map[string]int64{}}
}

// Slot is a reserved place on one backend for one model. Release it exactly
// once; further calls do nothing.
type Slot struct {
	Key
	// Loaded is whether the router believed the model loaded there.
	Loaded bool
	q      queueID
	tokens int64  // estimated tokens reserved on the backend
	choice choice // what ranking decided, for the affinity outcome
	queued bool   // granted after waiting in the queue
	// free, if set, releases the slot in the affinity model (and tells
	// the other replicas); it runs under the router's lock with the
	// router's own release, so that a request woken by the model's release
	// (a warm waiter) ranks on counts that no longer hold this slot.
	free func()
	r    *Router
	once sync.Once
}

// Release frees the slot and hands it to the waiter the queue's order
// picks.
func (s *Slot) Release() {
	s.once.Do(func() {
		s.r.release(s.Key, s.q, s.tokens, s.free)
	})
}

// Acquire reserves a slot for who on the best candidate with a free slot
// that who may take now, or waits in who's queue. The returned error is
// ErrQueueFull (ErrKeyQueueFull for who's own bound), ErrQueueTimeout,
// ErrNoCandidates or the context's error.
func (r *Router) Acquire(ctx context.Context, who Tenant, cands []Candidate) (*Slot, error) {
	return r.acquire(ctx, who, cands, nil, nil, nil, nil)
}

// acquire is Acquire with each candidate's affinity (nil: none), the
// request's prompt (nil: unknown) for the strategy, and how to compute
// the affinity again if the request has to wait (nil: keep aff).
func (r *Router) acquire(ctx context.Context, who Tenant, cands []Candidate, aff []affinity.Match, p *affinity.Prompt, rank func(time.Time) []affinity.Match, warm *affinity.Warm) (*Slot, error) {
	if len(cands) == 0 {
		return nil, ErrNoCandidates
	}
	who = who.normal()
	start := time.Now()
	w := &waiter{at: start, who: who, q: who.queue(), cands: cands, aff: aff, rank: rank, warm: warm}
	if p != nil {
		w.tokens, w.home = p.Tokens, p.Home()
	}
	r.lock(start)
	r.keep.note(cands)
	if r.quietLocked(w) {
		if c, ok := r.pickLocked(w, nil, start); ok {
			s := r.reserveLocked(c, w, start)
			r.mu.Unlock()
			r.observe(start, false, nil)
			return s, nil
		}
	}
	// The newcomer joins its queue first, so that the plan counts it and it
	// never passes an older waiter of its own queue.
	w.grant = make(chan *Slot, 1)
	elem := r.pushLocked(w)
	r.grantLocked(start)
	select {
	case s := <-w.grant:
		r.mu.Unlock()
		r.observe(start, false, nil)
		return s, nil
	default:
	}
	var full error
	switch {
	case r.waiters.Len() > r.opts.MaxQueue:
		full = ErrQueueFull
	case r.opts.MaxPerKey > 0 && r.perKey[who.ID] > r.opts.MaxPerKey:
		full = ErrKeyQueueFull
	}
	if full != nil {
		r.removeLocked(elem)
		r.mu.Unlock()
		r.observe(start, false, full)
		return nil, full
	}
	w.queued = true
	r.mu.Unlock()

	timer := time.NewTimer(r.opts.MaxWait)
	defer timer.Stop()
	var err error
	select {
	case s := <-w.grant:
		s.queued = true
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
		r.removeLocked(elem)
		// Leaving may change the plan (the last waiter of a class on a
		// pool): others may go now.
		r.grantLocked(time.Now())
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

func (r *Router) poolLocked(k Key, q queueID) *poolLoad {
	m := r.pools[k]
	if m == nil {
		m = map[queueID]*poolLoad{}
		r.pools[k] = m
	}
	l := m[q]
	if l == nil {
		l = &poolLoad{weight: 1}
		m[q] = l
	}
	return l
}

// dropPoolLocked forgets a queue's entry on k once it holds and waits for
// nothing.
func (r *Router) dropPoolLocked(k Key, q queueID) {
	if l := r.pools[k][q]; l != nil && l.n <= 0 && l.w <= 0 {
		delete(r.pools[k], q)
		if len(r.pools[k]) == 0 {
			delete(r.pools, k)
		}
	}
}

func (r *Router) pushLocked(w *waiter) *list.Element {
	for _, c := range w.cands {
		l := r.poolLocked(c.Key, w.q)
		l.w++
		l.weight = w.who.Weight
	}
	r.perKey[w.who.ID]++
	r.changedLocked()
	return r.waiters.PushBack(w)
}

func (r *Router) removeLocked(e *list.Element) {
	w := r.waiters.Remove(e).(*waiter)
	for _, c := range w.cands {
		r.poolLocked(c.Key, w.q).w--
		r.dropPoolLocked(c.Key, w.q)
	}
	if r.perKey[w.who.ID]--; r.perKey[w.who.ID] <= 0 {
		delete(r.perKey, w.who.ID)
	}
	r.changedLocked()
}

func (r *Router) changedLocked() {
	if r.opts.Changed != nil {
		r.opts.Changed()
	}
}

// quietLocked reports whether nobody else waits for w's pools, here or on
// another replica: then the fleet plan would give w any free slot, and
// pickLocked may skip computing it (the path of every request that finds
// a free slot on a quiet fleet).
func (r *Router) quietLocked(w *waiter) bool {
	if r.waiters.Len() > 0 {
		return false
	}
	for _, c := range w.cands {
		if r.remote != nil && len(r.remote.Peers(c.Key)) > 0 {
			return false
		}
	}
	return true
}

// pickLocked ranks w's candidates that w may take a slot of now. plans
// caches each (backend, model)'s plan for one pass over the waiters; nil
// means nobody else waits (quietLocked): any free slot is w's.
func (r *Router) pickLocked(w *waiter, plans map[Key]plan, now time.Time) (Candidate, bool) {
	rs := r.ranks[:0]
	for i, c := range w.cands {
		local := r.inflight[c.Key]
		if plans == nil {
			if local >= c.Cap || r.keepsLocked(w.q, c.Key, c.Cap, local, now) {
				continue
			}
		} else {
			p, ok := plans[c.Key]
			if !ok {
				p = r.planLocked(c.Key, c.Cap, now)
				plans[c.Key] = p
			}
			if local+p.othersFor(w.q) >= c.Cap {
				continue
			}
			if l := r.pools[c.Key][w.q]; l == nil || l.n >= p.target[w.q] {
				continue // not this queue's turn on this pool
			}
		}
		if r.warmKeptLocked(w, c, local, now) {
			continue
		}
		in, total := local, r.backend[c.Backend]
		if r.remote != nil {
			if local >= r.remote.Share(c.Key, c.Cap) && !r.mayBorrowLocked(c.Key, now) {
				continue
			}
			in += r.remote.InFlight(c.Key)
			total += r.remote.BackendInFlight(c.Backend)
		}
		rs = append(rs, ranked{c: c, i: i, in: in, total: total, tokens: r.tokensLocked(c.Backend)})
	}
	r.ranks = rs
	return r.chooseLocked(w, rs, now)
}

// mayBorrowLocked allows a slot beyond this replica's share only once its
// demand has been visible to the others for a borrow gap (so that a burst
// hitting every replica at once is met with shares, not borrowing), and no
// more than one borrowed slot per gap.
func (r *Router) mayBorrowLocked(k Key, now time.Time) bool {
	since, ok := r.busy[k]
	if !ok {
		r.busy[k] = now
		since = now
	}
	wait := max(r.opts.BorrowGap-now.Sub(since), r.opts.BorrowGap-now.Sub(r.borrowed[k]))
	if wait <= 0 {
		return true
	}
	r.wakeLocked(wait)
	return false
}

// wakeLocked runs a grant pass after d (or sooner, if one is due sooner),
// for a waiter that only the borrow gap holds back: nothing else might
// wake it before the next message from another replica.
func (r *Router) wakeLocked(d time.Duration) {
	at := time.Now().Add(d)
	if !r.wakeAt.IsZero() && !r.wakeAt.After(at) {
		return
	}
	r.wakeAt = at
	if r.wake == nil {
		r.wake = time.AfterFunc(d, r.onWake)
		return
	}
	r.wake.Reset(d)
}

func (r *Router) onWake() {
	now := time.Now()
	r.lock(now)
	r.wakeAt = time.Time{}
	r.grantLocked(now)
	r.mu.Unlock()
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

func (r *Router) reserveLocked(c Candidate, w *waiter, now time.Time) *Slot {
	k, q := c.Key, w.q
	if _, ok := r.busy[k]; !ok {
		r.busy[k] = now
	}
	if r.remote != nil && r.inflight[k] >= r.remote.Share(k, c.Cap) {
		r.borrowed[k] = now
	}
	r.inflight[k]++
	r.backend[k.Backend]++
	if w.tokens > 0 {
		r.tokens[k.Backend] += w.tokens
	}
	r.poolLocked(k, q).n++
	if q.class == 0 {
		r.keep.interactiveAt = now
	}
	d := r.recent[q]
	if d == nil {
		d = &decaying{}
		r.recent[q] = d
	}
	d.add(now, 1)
	r.changedLocked()
	return &Slot{Key: k, Loaded: c.Loaded, q: q, tokens: w.tokens, choice: w.choice, r: r}
}

func (r *Router) release(k Key, q queueID, tokens int64, free func()) {
	now := time.Now()
	r.lock(now)
	defer r.mu.Unlock()
	if free != nil {
		free()
	}
	if tokens > 0 {
		if r.tokens[k.Backend] -= tokens; r.tokens[k.Backend] <= 0 {
			delete(r.tokens, k.Backend)
		}
	}
	if r.inflight[k]--; r.inflight[k] <= 0 {
		delete(r.inflight, k)
		if r.waiters.Len() == 0 {
			delete(r.busy, k) // idle again: the next burst starts with shares
		}
	}
	if r.backend[k.Backend]--; r.backend[k.Backend] <= 0 {
		delete(r.backend, k.Backend)
	}
	r.poolLocked(k, q).n--
	r.dropPoolLocked(k, q)
	r.changedLocked()
	r.grantLocked(now)
}

// grantLocked serves waiters while any may take a slot, oldest first among
// those the plan lets go (so FIFO within a queue). A grant can open a slot
// to a waiter passed over earlier in the same pass (it took the last
// waiter of a higher class on a pool), so passes repeat until one grants
// nothing.
func (r *Router) grantLocked(now time.Time) {
	for r.waiters.Len() > 0 {
		plans := map[Key]plan{}
		if !r.anyRoomLocked(plans, now) {
			return
		}
		granted, skipped, again := false, false, false
		for e := r.waiters.Front(); e != nil; {
			next := e.Next()
			w := e.Value.(*waiter)
			if c, ok := r.pickLocked(w, plans, now); ok {
				r.removeLocked(e)
				w.grant <- r.reserveLocked(c, w, now)
				granted = true
				again = again || skipped
				clear(plans)
			} else {
				skipped = true
			}
			e = next
		}
		if !granted || !again {
			return
		}
	}
}

// anyRoomLocked reports whether any pool with local waiters has a slot its
// plan gives to this replica, filling plans on the way; most releases
// under load answer no at this cost, without a pass over the waiters.
func (r *Router) anyRoomLocked(plans map[Key]plan, now time.Time) bool {
	caps := map[Key]int{}
	for e := r.waiters.Front(); e != nil && len(caps) < len(r.pools); e = e.Next() {
		for _, c := range e.Value.(*waiter).cands {
			caps[c.Key] = c.Cap
		}
	}
	for k, cap := range caps {
		p := r.planLocked(k, cap, now)
		plans[k] = p
		if p.room && r.inflight[k]+p.fewestOthers() < cap {
			return true
		}
	}
	return false
}

// Recheck grants waiters after capacity changed outside Release (remote
// replicas released slots or their queues changed, or a cap was raised).
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

// Load is one (backend, model)'s local in-flight count and demand (in
// flight plus requests waiting that could use it), and the same per queue.
type Load struct {
	InFlight, Demand int
	Tenants          []TenantLoad
}

// Loads returns this replica's load per (backend, model), for sharing with
// the others. A waiter counts as demand on every pool it could use.
func (r *Router) Loads() map[Key]Load {
	now := time.Now()
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make(map[Key]Load, len(r.pools))
	clear(r.published)
	oldest := r.oldestLocked(nil)
	for k, queues := range r.pools {
		var l Load
		r.published[k] = make(map[queueID]poolLoad, len(queues))
		for q, pl := range queues {
			pub := *pl
			pub.oldest = oldest[poolID{k, q}]
			r.published[k][q] = pub
			l.InFlight += pl.n
			l.Demand += pl.n + pl.w
			l.Tenants = append(l.Tenants, TenantLoad{ID: q.id, Class: className(q.class), Weight: pl.weight,
				InFlight: pl.n, Waiting: pl.w, Recent: r.recentLocked(q, now), Oldest: pub.oldest})
		}
		out[k] = l
	}
	// Recent counts of queues gone quiet are forgotten once negligible.
	for q, d := range r.recent {
		if d.value(now) < 0.01 {
			delete(r.recent, q)
		}
	}
	// Waiters held back until the others heard of them may go now.
	r.grantLocked(now)
	return out
}

// QueueLen is the number of waiting requests.
func (r *Router) QueueLen() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.waiters.Len()
}
