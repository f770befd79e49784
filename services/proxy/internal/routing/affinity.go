package routing

import (
	"context"
	"fmt"
	"maps"
	"net/http"
	"strings"
	"time"

	"github.com/droverhq/drover/services/proxy/internal/affinity"
)

// Strategy is how the router picks among candidates with a free slot
// (docs/routing.md).
type Strategy int

const (
	// LeastLoaded: loaded model first, then fewest in flight for the
	// model, on the backend, then weight (the router's original order).
	LeastLoaded Strategy = iota
	// Prefix: loaded model first, then, among the candidates within the
	// load bound of the least loaded, the one holding the request's session
	// or the longest cached prefix; else the least loaded, with tokens in
	// flight breaking ties of requests in flight.
	Prefix
	// Session: as Prefix, on explicit session hints only.
	Session
	// RoundRobin: the next candidate with a free slot in turn.
	RoundRobin
)

// ParseStrategy reads routing.strategy.
func ParseStrategy(s string) (Strategy, error) {
	switch s {
	case "least_loaded":
		return LeastLoaded, nil
	case "prefix", "":
		return Prefix, nil
	case "session":
		return Session, nil
	case "round_robin":
		return RoundRobin, nil
	}
	return 0, fmt.Errorf("must be prefix, least_loaded, round_robin or session, got %q", s)
}

func (s Strategy) String() string {
	return [...]string{"least_loaded", "prefix", "session", "round_robin"}[s]
}

// Affinity configures cache-affine ranking (Options.Affinity).
type Affinity struct {
	Index  *affinity.Index
	Parser affinity.Parser
	// LoadBound is how many more requests in flight (this replica's and
	// the others') the affine candidate may carry than the least loaded
	// one; LoadBoundTokens the same in estimated tokens (0: no token
	// bound).
	LoadBound       int
	LoadBoundTokens int64
	// Inserted, if set, receives the hashes a grant added to the index,
	// and those it used again that the replicas last heard of more than
	// Refresh ago (keeping the others' copies fresh and their
	// least-recently-used order close to this one's), for sharing; it must
	// not block.
	Inserted func(t affinity.Target, hashes []uint64)
	Refresh  time.Duration
	// Slots, if set, models the backends' cache slots from this replica's
	// grants; while Alone (nil: always) says no other replica sends
	// requests, a candidate's prefix is what its free slots hold in the
	// model rather than what the index remembers.
	Slots *affinity.Slots
	Alone func() bool
	// SlotEvent, if set, shares this replica's takes and releases of the
	// slot model with the other replicas (whose Slots apply them): the
	// model then sees the fleet's requests and ranks even while other
	// replicas are heard. It must not block.
	SlotEvent func(affinity.SlotEvent)
	// RemoteTokens, if set, is the other replicas' estimated tokens in
	// flight on a backend (affinity.Sharer.Tokens); it must not block.
	RemoteTokens func(backend string) int64
	// Outcome, if set, is told how each ranked request went: "hit" (the
	// affine candidate won), "override" (it was over the load bound),
	// "miss" (no candidate held anything), with the prompt's bytes and the
	// bytes the chosen backend held. It is called outside the router's
	// lock.
	Outcome func(outcome string, promptBytes, cachedBytes int)
	// Slotted, if set, is told for each request ranked with the slot
	// model what the modelled slots held for it when it was granted
	// (Slotted* reasons) and what it waited for (Wait*); outside the
	// router's lock.
	Slotted func(reason, wait string)
}

// What the slot model held for a granted request (Affinity.Slotted).
const (
	// SlottedHit: a free slot of the chosen backend holds part of it.
	SlottedHit = "hit"
	// SlottedElsewhere: not the chosen backend, but another candidate's
	// free slot holds part of it (over the load bound, or no slot of it
	// was this request's to take).
	SlottedElsewhere = "elsewhere"
	// SlottedBusy: only busy slots hold part of it (another request of
	// its group, or its own conversation's previous turn, holds them).
	SlottedBusy = "busy"
	// SlottedEvicted: no slot holds any of it, though its group was asked
	// before: overwritten.
	SlottedEvicted = "evicted"
	// SlottedNew: no slot holds any of it and its group is new.
	SlottedNew = "new"
)

// What a request waited for before its grant (Affinity.Slotted).
const (
	WaitNone  = "none"
	WaitQueue = "queue" // a slot, in the fair queue
	WaitWarm  = "warm"  // the busy slot holding its prefix (warmWait)
)

// Pick outcomes, for metrics.
const (
	OutcomeHit      = "hit"
	OutcomeOverride = "override"
	OutcomeMiss     = "miss"
)

// ranked is one candidate with a free slot that the waiter may take, with
// its load.
type ranked struct {
	c         Candidate
	i         int // index in the waiter's candidates
	in, total int
	tokens    int64
}

// choice is what ranking decided for a waiter, kept for reporting.
type choice struct {
	outcome string
	match   affinity.Match
}

// Prompt reads what the router's strategy uses of a request: its prompt
// chain, session hint and estimated tokens (nil: the strategy uses none,
// or the route has no prompt to cache, as embeddings).
func (r *Router) Prompt(route string, body []byte, h http.Header) *affinity.Prompt {
	a := r.opts.Affinity
	if a == nil || (r.opts.Strategy != Prefix && r.opts.Strategy != Session) || strings.Contains(route, "embed") || strings.Contains(route, "rerank") {
		return nil
	}
	p := a.Parser.Parse(route, body, h)
	return &p
}

// AcquireFor is Acquire for a request whose prompt p the strategy may use
// (nil: none). Under Prefix and Session the candidates' affinity is read
// from the index before the router's lock is taken, and the granted
// backend is recorded in the index after it is released.
func (r *Router) AcquireFor(ctx context.Context, who Tenant, cands []Candidate, p *affinity.Prompt) (*Slot, error) {
	a := r.opts.Affinity
	if p == nil || a == nil || a.Index == nil || (r.opts.Strategy != Prefix && r.opts.Strategy != Session) {
		return r.acquire(ctx, who, cands, nil, p, nil, nil)
	}
	now := time.Now()
	slots := a.Slots
	if slots != nil && a.SlotEvent == nil && a.Alone != nil && !a.Alone() {
		slots = nil // the others' requests fill the slots too, unheard: the index knows more
	}
	var warm *affinity.Warm
	if slots != nil && len(p.Chain) > 0 {
		if warm = warmWait(ctx, slots, cands, p, now, a.SlotEvent); warm != nil {
			defer func() {
				slots.Leave(warm)
				if a.SlotEvent != nil {
					a.SlotEvent(warm.LeaveEvent())
				}
			}()
			now = time.Now()
		}
	}
	rank := func(now time.Time) []affinity.Match { return matches(a.Index, slots, cands, p, now, warm) }
	s, err := r.acquire(ctx, who, cands, rank(now), p, rank, warm)
	if err != nil {
		return nil, err
	}
	t := affinity.Target{Backend: s.Backend, Model: s.Model}
	if slots != nil && a.Slotted != nil && len(p.Chain) > 0 {
		wait := WaitNone
		switch {
		case s.queued:
			wait = WaitQueue
		case warm != nil:
			wait = WaitWarm
		}
		a.Slotted(slotted(slots, cands, t, p, time.Now(), warm), wait)
	}
	if a.Slots != nil {
		n := 0
		for _, c := range cands {
			if c.Key == s.Key {
				n = c.Cap
			}
		}
		took := time.Now()
		i := a.Slots.TakeFor(t, n, p, took, warm)
		s.free = func() { a.Slots.Release(t, i) }
		if a.SlotEvent != nil {
			chain := a.Slots.Keep(p.Chain)
			if chain == nil {
				chain = []uint64{} // a take, not a release
			}
			a.SlotEvent(affinity.SlotEvent{T: t, ID: uint64(i), Slots: n, Chain: chain, Ticket: warm.Ticket(), At: took.UnixMicro()})
			// Shared under the router's lock too, the release goes out
			// before any take it makes room for (a warm waiter it wakes),
			// in the order the other replicas' models must apply them.
			s.free = func() {
				a.Slots.Release(t, i)
				a.SlotEvent(affinity.SlotEvent{T: t, ID: uint64(i)})
			}
		}
	}
	if a.Refresh > 0 && a.Inserted != nil {
		if fresh := a.Index.Insert(t, p, time.Now(), a.Refresh, nil); len(fresh) > 0 {
			a.Inserted(t, fresh)
		}
	} else {
		a.Index.Insert(t, p, time.Now(), 0, nil)
	}
	if a.Outcome != nil {
		a.Outcome(s.choice.outcome, p.Bytes, min(p.Bytes, s.choice.match.Blocks*a.Parser.BlockBytes))
	}
	return s, nil
}

// matches is each candidate's affinity for p now: what the index holds,
// or with the slot model (slots not nil) what its free slots hold (w: the
// request's warm wait, nil: none).
func matches(index *affinity.Index, slots *affinity.Slots, cands []Candidate, p *affinity.Prompt, now time.Time, w *affinity.Warm) []affinity.Match {
	out := make([]affinity.Match, len(cands))
	for i, c := range cands {
		if !c.Loaded {
			// A model not loaded has no cache: its entries wait unread
			// until it is loaded again or they age out.
			continue
		}
		t := target(c)
		out[i] = index.Lookup(t, p, now)
		if slots != nil && len(p.Chain) > 0 {
			// The model knows what the slots hold: where the session went
			// last is no better a guess (a miss there may have overwritten
			// it since).
			out[i].Blocks = slots.FreeFor(t, p, now, w)
			out[i].Session = 0
			if out[i].Blocks == 0 {
				out[i].Evicts = slots.Evicts(t, p, now)
			}
		}
	}
	return out
}

// TokenLoads is this replica's estimated tokens in flight per backend,
// for sharing.
func (r *Router) TokenLoads() map[string]int64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return maps.Clone(r.tokens)
}

// tokensLocked is the estimated tokens in flight on a backend: this
// replica's, and the others' as last shared.
func (r *Router) tokensLocked(backend string) int64 {
	n := r.tokens[backend]
	if a := r.opts.Affinity; a != nil && a.RemoteTokens != nil {
		n += a.RemoteTokens(backend)
	}
	return n
}

// chooseLocked picks among rs (in candidate order) by the router's
// strategy. A waiter that queued is ranked on its affinity now, not as
// when it arrived: the slots freed since, and the other replicas' takes
// heard meanwhile, decide where its prompt is cached.
func (r *Router) chooseLocked(w *waiter, rs []ranked, now time.Time) (Candidate, bool) {
	if len(rs) == 0 {
		return Candidate{}, false
	}
	switch r.opts.Strategy {
	case RoundRobin:
		c := rs[r.turn%uint64(len(rs))].c
		r.turn++
		return c, true
	case Prefix, Session:
		if w.queued && w.rank != nil {
			w.aff = w.rank(now)
		}
		if w.aff != nil {
			return r.affineLocked(w, rs), true
		}
	}
	best := rs[0]
	for _, x := range rs[1:] {
		if better(x.c, x.in, x.total, best.c, best.in, best.total) {
			best = x
		}
	}
	return best.c, true
}

// affineLocked: among the candidates with the same loaded state as the
// least loaded one (loaded model first, then requests, then tokens in
// flight) and within the load bound of it, the one with the strongest
// affinity (lighter first among equals); the least loaded when none has
// any. The backend whose slot the request waited for (warmWait) is
// exempt from the bound: having waited for that slot rather than
// evaluate the prompt elsewhere, sending it elsewhere now would pay for
// both. The outcome is an override when a candidate beyond the bound had a
// stronger affinity than the one chosen.
func (r *Router) affineLocked(w *waiter, rs []ranked) Candidate {
	least := rs[0]
	for _, x := range rs[1:] {
		if lighter(x, least) {
			least = x
		}
	}
	var best ranked
	var bm, over affinity.Match
	found := false
	for _, x := range rs {
		m := w.aff[x.i]
		if m.Zero() || x.c.Loaded != least.c.Loaded {
			continue
		}
		if !r.withinBoundLocked(x, least) && w.warm.Target() != target(x.c) {
			if m.Better(over) {
				over = m
			}
			continue
		}
		if !found || m.Better(bm) || (!bm.Better(m) && lighter(x, best)) {
			best, bm, found = x, m, true
		}
	}
	if !found {
		best = r.homeLocked(w, rs, least)
	}
	switch {
	case over.Better(bm):
		w.choice = choice{outcome: OutcomeOverride, match: bm}
	case found:
		w.choice = choice{outcome: OutcomeHit, match: bm}
	default:
		w.choice = choice{outcome: OutcomeMiss}
	}
	return best.c
}

// warmKeptLocked reports whether c's free slots are all kept for requests
// waiting for a warm slot that joined their line before w arrived
// (affinity.Slots.Kept): Ollama would give w one of them, and the waiter
// would find its slot taken. w then waits, as behind earlier arrivals,
// until the waiter takes its slot or the keeping lapses (a wake is set
// for that). local is this replica's requests in flight on c.
func (r *Router) warmKeptLocked(w *waiter, c Candidate, local int, now time.Time) bool {
	a := r.opts.Affinity
	if a == nil || a.Slots == nil || (r.opts.Strategy != Prefix && r.opts.Strategy != Session) {
		return false
	}
	n, lapse := a.Slots.Kept(target(c), now, w.at, w.warm.Ticket())
	if n == 0 {
		return false
	}
	in := local
	if r.remote != nil {
		in += r.remote.InFlight(c.Key)
	}
	if in+n < c.Cap {
		return false
	}
	r.wakeLocked(max(lapse.Sub(now), time.Millisecond))
	return true
}

// target is c's (backend, model) as the affinity models name it.
func target(c Candidate) affinity.Target {
	return affinity.Target{Backend: c.Backend, Model: c.Model}
}

// withinBoundLocked reports whether x carries at most the load bound more
// than least: requests in flight for the model, and estimated tokens.
func (r *Router) withinBoundLocked(x, least ranked) bool {
	a := r.opts.Affinity
	return x.in-least.in <= a.LoadBound && (a.LoadBoundTokens <= 0 || x.tokens-least.tokens <= a.LoadBoundTokens)
}

// homeLocked is where a prompt cached nowhere goes: among the candidates
// with least's loaded state and within the load bound of it, the one where
// it would overwrite the least requested prompt (the slot model's
// Match.Evicts: one replica), then the prompt's home (the highest
// affinity.HomeScore of its first block), so that a group's misses land on
// one backend and overwrite its slots rather than every backend's
// (affinity/home.go); least when the prompt has no home.
func (r *Router) homeLocked(w *waiter, rs []ranked, least ranked) ranked {
	if w.home == 0 {
		return least
	}
	best, score := least, affinity.HomeScore(w.home, least.c.Backend)
	for _, x := range rs {
		if x.c.Loaded != least.c.Loaded || !r.withinBoundLocked(x, least) {
			continue
		}
		s := affinity.HomeScore(w.home, x.c.Backend)
		if e, be := w.aff[x.i].Evicts, w.aff[best.i].Evicts; e < be || (e == be && s > score) {
			best, score = x, s
		}
	}
	return best
}

// lighter orders candidates for Prefix and Session: loaded model first,
// then fewest in flight for the model, then fewest estimated tokens in
// flight on the backend, then fewest in flight on it, then weight.
func lighter(x, y ranked) bool {
	if x.c.Loaded != y.c.Loaded {
		return x.c.Loaded
	}
	if x.in != y.in {
		return x.in < y.in
	}
	if x.tokens != y.tokens {
		return x.tokens < y.tokens
	}
	if x.total != y.total {
		return x.total < y.total
	}
	return x.c.Weight > y.c.Weight
}

// slotted is what the slot model holds for p, about to be granted on t.
func slotted(slots *affinity.Slots, cands []Candidate, t affinity.Target, p *affinity.Prompt, now time.Time, w *affinity.Warm) string {
	if slots.FreeFor(t, p, now, w) > 0 {
		return SlottedHit
	}
	busy := false
	for _, c := range cands {
		ct := target(c)
		if slots.Free(ct, p, now) > 0 {
			return SlottedElsewhere
		}
		busy = busy || slots.Held(ct, p, now) > 0
	}
	switch {
	case busy:
		return SlottedBusy
	case slots.Seen(p):
		return SlottedEvicted
	}
	return SlottedNew
}

// warmWait holds back a prompt that no free slot holds any of while a busy
// slot holding part of it should be released sooner than evaluating that
// part elsewhere would take (Slots.JoinWarm), for at most that evaluation
// time, and only while the slot is expected back before then: a
// concurrent request of a popular group then reuses its group's slot
// instead of evaluating the prompt cold and overwriting another group's.
// Requests waiting for one slot get it in turn. The request is not in the
// router's queue meanwhile (it holds no place there and takes no slot).
// With sharing (share not nil) it waits in the slot's line on every
// replica. It returns the wait, for FreeFor, TakeFor and Leave (nil: no
// wait).
func warmWait(ctx context.Context, slots *affinity.Slots, cands []Candidate, p *affinity.Prompt, now time.Time, share func(affinity.SlotEvent)) *affinity.Warm {
	var targets []affinity.Target
	for _, c := range cands {
		if c.Loaded {
			targets = append(targets, target(c))
		}
	}
	w, ok := slots.JoinWarm(targets, p, now)
	if !ok {
		return nil
	}
	if share != nil {
		share(w.JoinEvent()) // in its line on every replica
	}
	deadline := now.Add(w.Wait)
	timer := time.NewTimer(w.Wait)
	defer timer.Stop()
	for {
		ready, left, released, holds := slots.Ready(w, p, now)
		if ready || !holds || now.Add(left).After(deadline) {
			// Free for it; or overwritten, or not back in time: evaluate
			// it now rather than later.
			return w
		}
		select {
		case <-released:
		case <-timer.C:
			return w
		case <-ctx.Done():
			return w
		}
		now = time.Now()
	}
}
