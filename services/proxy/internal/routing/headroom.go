package routing

import (
	"cmp"
	"slices"
	"time"
)

// InteractiveWindow is how long after the last interactive request seen
// (granted on this replica, or held or waiting on another) batch waiters
// keep slots free.
const InteractiveWindow = 10 * time.Second

// PeakWindow is how far back the interactive peak reaches: it is the
// larger of the current and the previous PeakWindow/2, so it remembers 10
// to 20 s. It matters only while interactive requests are about
// (InteractiveWindow). Remembering 5 to 10 s, the priority benchmark's
// interactive p99 beside a flood missed its target in some runs; 10 to 20 s
// held it tighter for the same batch share (docs/limits-bench.md).
const PeakWindow = 20 * time.Second

// headroom keeps slots from batch requests for interactive ones. Nothing
// is preempted (Ollama cannot pause a generation), so an interactive
// request that arrives while batch holds every slot waits for a release:
// up to a whole batch generation. Batch therefore leaves free, while
// interactive requests are about:
//
//   - Options.InteractiveHeadroom slots, and
//   - with Options.InteractivePeak, what interactive requests held or
//     waited for at their peak in the last PeakWindow beyond what
//     they hold now, so that a burst as large as the last one finds free
//     slots instead of waiting for batch generations to end,
//
// The headroom never keeps a model's last slot (so batch keys still run
// beside steady interactive traffic); the peak keeps up to all but
// Options.BatchMinSlots, since interactive requests did need them.
//
// The kept slots are counted fleet-wide and laid over the model's pools
// in one order that every replica computes alike (the largest cap, then
// the backend's name; keptLocked), so that the fleet plan, which every
// replica runs alike, keeps them: a check on each replica's own view of the fleet's free
// slots would let replicas acting on the same release all take the last
// one (docs/limits.md).
type headroom struct {
	interactiveAt time.Time
	pools         map[string][]Candidate // per model: every pool, in keeping order
	peak          map[string]*peak       // per model: interactive demand's recent peak
}

// peak is the largest value observed in the current and the previous half
// of PeakWindow.
type peak struct {
	cur, prev int
	start     time.Time
}

func (p *peak) observe(n int, now time.Time) int {
	if age := now.Sub(p.start); age >= PeakWindow/2 {
		p.prev = p.cur
		if age >= PeakWindow {
			p.prev = 0
		}
		p.cur, p.start = 0, now
	}
	p.cur = max(p.cur, n)
	return max(p.cur, p.prev)
}

// note learns a model's pools from a waiter's candidates.
func (h *headroom) note(cands []Candidate) {
	if len(cands) == 0 {
		return
	}
	if h.pools == nil {
		h.pools, h.peak = map[string][]Candidate{}, map[string]*peak{}
	}
	m := cands[0].Model
	if cur, ok := h.pools[m]; ok && (len(cur) > len(cands) || len(cur) == len(cands) && sameCaps(cur, cands)) {
		return // known, or a failover's shorter list: keep the full one
	}
	pools := slices.Clone(cands)
	slices.SortFunc(pools, func(a, b Candidate) int {
		return cmp.Or(cmp.Compare(b.Cap, a.Cap), cmp.Compare(a.Backend, b.Backend))
	})
	h.pools[m] = pools
}

// sameCaps reports whether every pool of b is in a with the same cap.
func sameCaps(a, b []Candidate) bool {
	for _, c := range b {
		i := slices.IndexFunc(a, func(x Candidate) bool { return x.Key == c.Key })
		if i < 0 || a[i].Cap != c.Cap {
			return false
		}
	}
	return true
}

// interactiveLocked is the fleet's interactive requests on pool k: held,
// and waiting (a waiter counts on every pool it could use).
func (r *Router) interactiveLocked(k Key) (held, waiting int) {
	for q, l := range r.pools[k] {
		if q.class == 0 {
			held += l.n
			waiting += l.w
		}
	}
	if r.remote != nil {
		for _, p := range r.remote.Peers(k) {
			for _, t := range p.Tenants {
				if classIndex(t.Class) == 0 {
					held += t.InFlight
					waiting += t.Waiting
				}
			}
		}
	}
	return held, waiting
}

// keptLocked is how many free slots of pool k batch leaves to interactive
// requests (whether they are about is keepingLocked's question). The
// slots reserved for interactive requests, held or free, are what they
// hold plus the headroom, or their recent peak if larger, and never all
// of the model's; they are laid over the model's pools in the keeping
// order, and a pool keeps free what of its part interactive requests do
// not hold. The layout depends on fleet-wide counts only, not on which
// pool holds what, so replicas a message apart agree on where the kept
// slots are (a layout that followed the interactive requests moved with
// every grant, and replicas acting on the same release each thought the
// kept slot was on the other pool).
func (r *Router) keptLocked(k Key, now time.Time) int {
	pools := r.keep.pools[k.Model]
	if len(pools) == 0 {
		return 0 // no waiter has named the model's pools yet (note)
	}
	total, held, waiting, here := 0, 0, 0, 0
	for _, c := range pools {
		n, w := r.interactiveLocked(c.Key)
		total, held, waiting = total+c.Cap, held+n, max(waiting, w)
		if c.Key == k {
			here = n
		}
	}
	// The headroom never keeps a model's last slot from batch; the peak
	// keeps what interactive requests recently needed, up to all but
	// BatchMinSlots.
	reserve := min(held+r.opts.InteractiveHeadroom, total-1)
	if r.opts.InteractivePeak {
		pk := r.keep.peak[k.Model]
		if pk == nil {
			pk = &peak{}
			r.keep.peak[k.Model] = pk
		}
		reserve = max(reserve, min(pk.observe(held+waiting, now), total-r.opts.BatchMinSlots))
	}
	for _, c := range pools {
		part := min(reserve, c.Cap)
		if c.Key == k {
			return max(part-here, 0)
		}
		reserve -= part
	}
	return 0
}

// keepingLocked reports whether interactive requests are about for k's
// model: one granted here within InteractiveWindow, or another replica
// holding or waiting with one on k. While a window is open it schedules a
// grant pass for when it closes, so that batch waiters held back only by
// the headroom then go.
func (r *Router) keepingLocked(k Key, now time.Time) bool {
	if r.opts.InteractiveHeadroom <= 0 && !r.opts.InteractivePeak {
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
// about, and no more free slots on k than are kept there.
func (r *Router) keepsLocked(q queueID, k Key, cap, local int, now time.Time) bool {
	if q.class == 0 || !r.keepingLocked(k, now) {
		return false
	}
	held := local
	if r.remote != nil {
		held += r.remote.InFlight(k)
	}
	return cap-held <= r.keptLocked(k, now)
}
