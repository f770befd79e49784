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
	// RemoteTokens, if set, is the other replicas' estimated tokens in
	// flight on a backend (affinity.Sharer.Tokens); it must not block.
	RemoteTokens func(backend string) int64
	// Outcome, if set, is told how each ranked request went: "hit" (the
	// affine candidate won), "override" (it was over the load bound),
	// "miss" (no candidate held anything), with the prompt's bytes and the
	// bytes the chosen backend held. It is called outside the router's
	// lock.
	Outcome func(outcome string, promptBytes, cachedBytes int)
}

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
		return r.acquire(ctx, who, cands, nil, p)
	}
	now := time.Now()
	slots := a.Slots
	if slots != nil && a.Alone != nil && !a.Alone() {
		slots = nil // the others' requests fill the slots too: the index knows more
	}
	matches := make([]affinity.Match, len(cands))
	for i, c := range cands {
		if c.Loaded {
			// A model not loaded has no cache: its entries wait unread
			// until it is loaded again or they age out.
			t := affinity.Target{Backend: c.Backend, Model: c.Model}
			matches[i] = a.Index.Lookup(t, p, now)
			if slots != nil && len(p.Chain) > 0 {
				// The model knows what the slots hold: where the session
				// went last is no better a guess (a miss there may have
				// overwritten it since).
				matches[i].Blocks = slots.Free(t, p, now)
				matches[i].Session = 0
				if matches[i].Blocks == 0 {
					matches[i].Evicts = slots.Evicts(t, p, now)
				}
			}
		}
	}
	s, err := r.acquire(ctx, who, cands, matches, p)
	if err != nil {
		return nil, err
	}
	t := affinity.Target{Backend: s.Backend, Model: s.Model}
	if a.Slots != nil {
		n := 0
		for _, c := range cands {
			if c.Key == s.Key {
				n = c.Cap
			}
		}
		i := a.Slots.Take(t, n, p, time.Now())
		s.done = func() { a.Slots.Release(t, i) }
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
// strategy.
func (r *Router) chooseLocked(w *waiter, rs []ranked) (Candidate, bool) {
	if len(rs) == 0 {
		return Candidate{}, false
	}
	switch r.opts.Strategy {
	case RoundRobin:
		c := rs[r.turn%uint64(len(rs))].c
		r.turn++
		return c, true
	case Prefix, Session:
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
// any. The outcome is an override when a candidate beyond the bound had a
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
		if !r.withinBoundLocked(x, least) {
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
