package routing

import "time"

// InteractiveWindow is how long after the last interactive request seen
// (granted on this replica, or held or waiting on another) batch waiters
// keep Options.InteractiveHeadroom free.
const InteractiveWindow = 10 * time.Second

// headroom keeps slots from batch requests for interactive ones. Nothing
// is preempted (Ollama cannot pause a generation), so without it an
// interactive request that arrives while batch holds every slot waits for
// a release. The kept slots are on one pool per model, the same on every
// replica (the largest cap, then the first backend by name), at most half
// the model's slots, so that the
// fleet plan, which every replica runs alike, keeps them: a check on each
// replica's own view of the fleet's free slots would let replicas acting
// on the same release all take the last one (docs/limits.md).
type headroom struct {
	interactiveAt time.Time
	pool          map[string]Key // per model: where the slots are kept
	total         map[string]int // per model: the candidates' slots
}

// note learns a model's pools from a waiter's candidates.
func (h *headroom) note(cands []Candidate) {
	if len(cands) == 0 {
		return
	}
	if h.pool == nil {
		h.pool, h.total = map[string]Key{}, map[string]int{}
	}
	best, total := cands[0], 0
	for _, c := range cands {
		total += c.Cap
		if c.Cap > best.Cap || (c.Cap == best.Cap && c.Backend < best.Backend) {
			best = c
		}
	}
	m := best.Model
	if cur, ok := h.pool[m]; ok && cur != best.Key && h.total[m] > total {
		return // a failover's shorter list: keep the full list's choice
	}
	h.pool[m], h.total[m] = best.Key, total
}

// slots is how many slots of k batch leaves free: n, at most half the
// model's slots (so batch keys still run), on the model's kept pool only
// (and no more than that pool has).
func (h *headroom) slots(k Key, n int, cap int) int {
	if n <= 0 || h.pool[k.Model] != k {
		return 0
	}
	return min(n, h.total[k.Model]/2, cap)
}

// keepingLocked reports whether interactive requests are about for k: one
// granted here within InteractiveWindow, or another replica holding or
// waiting with one on k. While a window is open it schedules a grant pass
// for when it closes, so that batch waiters held back only by the
// headroom then go.
func (r *Router) keepingLocked(k Key, now time.Time) bool {
	if r.keep.slots(k, r.opts.InteractiveHeadroom, 1) == 0 {
		return false
	}
	if left := InteractiveWindow - now.Sub(r.keep.interactiveAt); left > 0 {
		r.wakeLocked(left)
		return true
	}
	if r.remote != nil {
		for _, p := range r.remote.Peers(k) {
			for _, t := range p.Tenants {
				if classIndex(t.Class) == 0 && t.InFlight+t.Waiting > 0 {
					return true
				}
			}
		}
	}
	return false
}

// keepsLocked reports whether a waiter of queue q must leave candidate k
// alone on a quiet fleet (no plan): a batch waiter, interactive requests
// about, and no more free slots on k than the headroom.
func (r *Router) keepsLocked(q queueID, k Key, cap, local int, now time.Time) bool {
	if q.class == 0 || !r.keepingLocked(k, now) {
		return false
	}
	held := local
	if r.remote != nil {
		held += r.remote.InFlight(k)
	}
	return cap-held <= r.keep.slots(k, r.opts.InteractiveHeadroom, cap)
}
