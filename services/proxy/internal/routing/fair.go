package routing

import "time"

// PeerLoad is another replica's load on one (backend, model): its totals
// and, per queue (key and class), what it holds and what waits there.
// Totals above the queues' sums (a peer's list was cut to the limits) count
// as one unnamed interactive queue.
type PeerLoad struct {
	Rank     int // the replica's place among the live replicas, by name
	InFlight int
	Demand   int // in flight plus waiting
	Tenants  []TenantLoad
}

// load is one queue's load on one (backend, model) on one replica.
type load struct {
	rank   int
	local  bool
	q      queueID
	weight int
	n, w   int // in flight, waiting
	shared int // waiting as the other replicas last heard it (peers: w)
	// oldest and sharedOldest are when the queue's oldest waiter here
	// arrived (Unix ms; 0: none or unknown), now and as last published.
	oldest, sharedOldest int64
	given                int // slots the plan gives it
	recent               float64
}

// plan is who may take the free slots of one (backend, model), computed
// from the whole fleet's loads: what this replica may hold per queue, and
// what the other replicas hold or are due.
type plan struct {
	target map[queueID]int
	// others is what the other replicas hold or are due, as a local queue
	// waiting for a slot sees it (reservedLocked); a queue without an
	// entry sees base.
	others map[queueID]int
	base   int
	room   bool // some local queue may take a slot now
}

// fewestOthers is the least that othersFor gives any local queue.
func (p plan) fewestOthers() int {
	n := p.base
	for _, o := range p.others {
		n = min(n, o)
	}
	return n
}

// othersFor is what the other replicas hold or are due, as local queue q
// sees it.
func (p plan) othersFor(q queueID) int {
	if n, ok := p.others[q]; ok {
		return n
	}
	return p.base
}

// queue is one queue's fleet-wide load in a plan.
type queue struct {
	weight, alloc, demand int
	recent                float64 // recent grants, plus those given in this pass
	at                    []int   // indexes into loads
}

// planLocked divides the free slots of k among the queues of the fleet:
//
//  1. Only the highest class with a waiter anywhere takes free slots;
//     slots held by other classes stay held (nothing is preempted).
//  2. Within that class, one slot at a time goes to the queue with the
//     fewest recent grants per weight, fleet-wide and across every
//     (backend, model) (weighted fair queuing on grants: the recent count
//     decays with a half-life of RecentHalfLife, so a share is kept across
//     grants and backends, and weights finer than one backend's cap still
//     hold); ties go to the queue holding fewer slots per weight, then by
//     key id.
//  3. A queue's slot goes to the replica where the queue's oldest waiter
//     arrived first (first come, first served for one key across
//     replicas), among the replicas that would find room for it by their
//     own check (within their even share of the cap, or the others' share
//     floors leave room: a slot given to a replica the floor blocks would
//     stay free); then to the one where most of the queue waits, then the
//     lower rank. When the queue waits on other replicas too, this
//     replica counts its own waiters, holdings and oldest arrival as the
//     others last heard them where that is less in its favour: two
//     replicas then never both take the same slot for one key (each would
//     have to beat the other's published figures with figures no better
//     than its own published ones), at the price of a slot left until the
//     next message when both are cautious.
//
// Every replica runs the same plan on the same shared loads, so replicas
// agree on who goes next up to the age of the loads they hear (see
// docs/limits.md, the queue).
func (r *Router) planLocked(k Key, cap int, now time.Time) plan {
	loads := r.loadsLocked(k, now)
	p := plan{target: map[queueID]int{}}
	top, held := -1, 0
	for _, l := range loads {
		held += l.n
		if l.w > 0 && (top < 0 || l.q.class < top) {
			top = l.q.class
		}
		if l.local {
			p.target[l.q] += l.n
		}
	}
	free := cap - held
	if top > 0 && r.keepingLocked(k, now) {
		free -= r.keptLocked(k, now) // batch leaves them
	}
	if top < 0 || free <= 0 {
		p.base = r.reservedLocked(k, loads, cap, top, nil)
		return p
	}
	// What each replica holds (and is given below), for the room check of
	// the replica choice; this replica's also as the others last heard it.
	byRank := map[int]int{}
	sharedHeld := 0
	for _, l := range loads {
		byRank[l.rank] += l.n
	}
	for _, l := range r.published[k] {
		sharedHeld += l.n
	}
	queues := map[queueID]*queue{}
	var order []queueID
	for i, l := range loads {
		if l.q.class != top {
			continue
		}
		q := queues[l.q]
		if q == nil {
			q = &queue{weight: 1}
			queues[l.q] = q
			order = append(order, l.q)
		}
		q.weight = max(q.weight, l.weight)
		q.alloc += l.n
		q.demand += l.n + l.w
		q.recent += l.recent
		q.at = append(q.at, i)
	}
	// The order before this pass: a queue's floor on the other replicas
	// counts only their queues that go before it (reservedLocked).
	start := make(map[queueID]queue, len(queues))
	for id, q := range queues {
		start[id] = *q
	}
	for ; free > 0; free-- {
		var best queueID
		var bq *queue
		for _, id := range order {
			q := queues[id]
			if q.alloc >= q.demand {
				continue
			}
			if bq == nil || before(id, q.alloc, q.weight, q.recent, best, bq.alloc, bq.weight, bq.recent) {
				best, bq = id, q
			}
		}
		if bq == nil {
			break
		}
		bq.alloc++
		bq.recent++
		// The replica with most of this queue still waiting gets the slot.
		elsewhere := false
		for _, i := range bq.at {
			elsewhere = elsewhere || (!loads[i].local && loads[i].w > 0)
		}
		left := func(l *load) int {
			if l.local && elsewhere {
				return min(l.w, l.shared) - l.given
			}
			return l.w - l.given
		}
		// oldest is when the replica's oldest waiter of the queue arrived,
		// this replica's as the others heard it where that is later; 0
		// when unknown (a waiter already given a slot in this pass leaves
		// the next one's arrival unknown).
		oldest := func(l *load) int64 {
			switch {
			case l.given > 0:
				return 0
			case l.local && elsewhere:
				return max(l.oldest, l.sharedOldest)
			}
			return l.oldest
		}
		// fits is whether the replica would find room for the slot by its
		// own check (the share floor of reservedLocked, as it computes it
		// for this queue): a replica beyond its share is blocked while a
		// peer within its share has demand, and a slot given to it would
		// stay free until the next message. A replica within its share
		// fits unless a peer borrowed beyond its own.
		ahead := goesBefore(start, best)
		fits := func(l *load) bool {
			held := byRank[l.rank]
			if l.local && elsewhere {
				held = max(held, sharedHeld)
			}
			return held+r.reservedFor(k, loads, l.rank, cap, top, ahead) < cap
		}
		at := -1
		for _, i := range bq.at {
			l := &loads[i]
			if left(l) <= 0 {
				continue
			}
			if at < 0 {
				at = i
				continue
			}
			a := &loads[at]
			if fl, fa := fits(l), fits(a); fl != fa {
				if fl {
					at = i
				}
				continue
			}
			if ol, oa := oldest(l), oldest(a); ol != 0 && oa != 0 && ol != oa {
				if ol < oa {
					at = i
				}
				continue
			}
			if left(l) > left(a) || (left(l) == left(a) && l.rank < a.rank) {
				at = i
			}
		}
		if at < 0 {
			// Every replica's remaining waiters are already counted (this
			// one's as published): the slot waits for the next message.
			bq.alloc = bq.demand
			free++
			continue
		}
		l := &loads[at]
		l.given++
		byRank[l.rank]++
		if l.local {
			sharedHeld++
		}
		if l.local {
			p.target[l.q]++
			p.room = true
		}
	}
	p.base = r.reservedLocked(k, loads, cap, top, nil)
	for _, l := range loads {
		if !l.local || p.target[l.q] <= l.n {
			continue // only a queue given a slot here may take one
		}
		if p.others == nil {
			p.others = map[queueID]int{}
		}
		p.others[l.q] = r.reservedLocked(k, loads, cap, top, goesBefore(start, l.q))
	}
	return p
}

// goesBefore reports the queues the plan serves before id, in the order
// before the pass (start): their demand on the other replicas counts toward
// the share floor id sees (reservedLocked). id's own demand elsewhere does
// not: which replica takes id's slot is the plan's choice, made alike on
// every replica (oldest waiter first, the caution rule for this replica's
// own figures), and a floor for it as well would leave the slot free when
// a zero-share replica has borrowed (two replicas with id waiting would each
// count the other's share, and neither take it).
func goesBefore(start map[queueID]queue, id queueID) func(queueID) bool {
	lq := start[id]
	return func(o queueID) bool {
		oq := start[o]
		return o != id && before(o, oq.alloc, oq.weight, oq.recent, id, lq.alloc, lq.weight, lq.recent)
	}
}

// reservedLocked is what the other replicas hold of a cap or are due by
// the plan, and at least their even share while they have that many
// requests of the top class waiting or running. A peer's in-flight count
// can be a message old, its share cannot, so a replica never takes a slot
// on a stale view that a busy peer is owed (the bound of docs/fleet.md).
// The price: while every replica is busy, none holds more than its share
// plus what the others leave.
//
// ahead, when set, says which of the peers' queues count toward that
// floor: those the plan serves before the local queue asking (not the
// queue itself: goesBefore), so that a light key waiting on one replica is
// not held back by a heavier key's demand on the others (docs/limits.md,
// the queue).
// Their in-flight always counts.
func (r *Router) reservedLocked(k Key, loads []load, cap, top int, ahead func(queueID) bool) int {
	return r.reservedFor(k, loads, r.rankLocked(), cap, top, ahead)
}

// reservedFor is reservedLocked as the replica ranked viewer computes it,
// from this replica's view of the loads.
func (r *Router) reservedFor(k Key, loads []load, viewer, cap, top int, ahead func(queueID) bool) int {
	type peer struct{ held, demand int }
	peers := map[int]*peer{}
	for _, l := range loads {
		if l.rank == viewer {
			continue
		}
		p := peers[l.rank]
		if p == nil {
			p = &peer{}
			peers[l.rank] = p
		}
		p.held += l.n + l.given
		p.demand += l.n
		if l.q.class == top && (ahead == nil || ahead(l.q)) {
			p.demand += l.w
		}
	}
	// A replica whose share is zero (a cap smaller than the number of
	// replicas) holds nothing of its own: reserving the others' shares for
	// them would leave it no slot while they stay busy, so its waiters
	// would starve until max_wait. It counts what the others hold and are
	// given, and borrows (one slot per borrow gap) as before the plan.
	floor := r.remote == nil || r.shareOfLocked(k, viewer, cap) > 0
	total := 0
	for rank, p := range peers {
		if floor {
			total += max(p.held, min(p.demand, r.shareOfLocked(k, rank, cap)))
		} else {
			total += p.held
		}
	}
	return total
}

// rankLocked is this replica's rank (0 alone).
func (r *Router) rankLocked() int {
	if r.remote == nil {
		return 0
	}
	return r.remote.Rank()
}

func (r *Router) shareOfLocked(k Key, rank, cap int) int {
	if r.remote == nil {
		return cap
	}
	return r.remote.ShareOf(k, rank, cap)
}

// before orders queues for the next slot: fewer recent grants per
// weight, then fewer slots held per weight, then key id.
func before(a queueID, aAlloc, aWeight int, aRecent float64, b queueID, bAlloc, bWeight int, bRecent float64) bool {
	if x, y := (aRecent+1)*float64(bWeight), (bRecent+1)*float64(aWeight); x != y {
		return x < y
	}
	if x, y := (aAlloc+1)*bWeight, (bAlloc+1)*aWeight; x != y {
		return x < y
	}
	return a.id < b.id
}

// loadsLocked lists every queue's load on k: the other replicas' (as last
// heard) and this one's (exact).
func (r *Router) loadsLocked(k Key, now time.Time) []load {
	var out []load
	rank := 0
	if r.remote != nil {
		rank = r.remote.Rank()
		for _, p := range r.remote.Peers(k) {
			n, w := p.InFlight, p.Demand-p.InFlight
			for _, t := range p.Tenants {
				out = append(out, load{rank: p.Rank, q: queueID{id: t.ID, class: classIndex(t.Class)}, weight: max(t.Weight, 1),
					n: t.InFlight, w: t.Waiting, shared: t.Waiting, recent: t.Recent, oldest: t.Oldest})
				n -= t.InFlight
				w -= t.Waiting
			}
			if n > 0 || w > 0 {
				out = append(out, load{rank: p.Rank, q: queueID{}, weight: 1, n: max(n, 0), w: max(w, 0), shared: max(w, 0)})
			}
		}
	}
	var oldest map[poolID]int64
	if len(out) > 0 { // only a plan with peers orders replicas
		oldest = r.oldestLocked(&k)
	}
	for q, l := range r.pools[k] {
		pub := r.published[k][q]
		out = append(out, load{rank: rank, local: true, q: q, weight: l.weight, n: l.n, w: l.w, shared: pub.w, recent: r.recentLocked(q, now),
			oldest: oldest[poolID{k, q}], sharedOldest: pub.oldest})
	}
	return out
}

// poolID is one queue on one (backend, model).
type poolID struct {
	k Key
	q queueID
}

// oldestLocked is when each queue's oldest waiter that could use a pool
// arrived, in Unix milliseconds, for every pool or (only not nil) one key's.
func (r *Router) oldestLocked(only *Key) map[poolID]int64 {
	out := map[poolID]int64{}
	for e := r.waiters.Front(); e != nil; e = e.Next() {
		w := e.Value.(*waiter)
		for _, c := range w.cands {
			if only != nil && c.Key != *only {
				continue
			}
			id := poolID{c.Key, w.q}
			if _, ok := out[id]; !ok {
				out[id] = max(w.at.UnixMilli(), 1)
			}
		}
	}
	return out
}

func (r *Router) recentLocked(q queueID, now time.Time) float64 {
	if d, ok := r.recent[q]; ok {
		return d.value(now)
	}
	return 0
}
