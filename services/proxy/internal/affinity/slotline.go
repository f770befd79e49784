package affinity

import (
	"slices"
	"time"
)

// Sharing the lines of warm slots between replicas: a request waiting on
// one replica for a busy slot (JoinWarm) is in that slot's line on every
// replica, so that another replica's request of the same group, arriving
// while the slot is free again but kept, lines up behind it instead of
// taking the slot; and the slot is kept for the fleet's first waiter,
// not for each replica's own. Without this each replica kept a released
// slot for its own first waiter and the others' requests took it first
// (docs/routing-bench.md).

// JoinEvent is w's joining its slot's line, for the other replicas.
func (w *Warm) JoinEvent() SlotEvent {
	return SlotEvent{T: w.t, Kind: SlotJoin, ID: w.ticket, Owner: w.owner, At: w.at / 1000, Until: w.until / 1000}
}

// LeaveEvent is w's leaving its line (it took a slot, or gave up).
func (w *Warm) LeaveEvent() SlotEvent {
	return SlotEvent{T: w.t, Kind: SlotLeave, ID: w.ticket}
}

// Ticket names w for a SlotEvent of its take (0: w is nil).
func (w *Warm) Ticket() uint64 { return w.id() }

// Target is the (backend, model) whose slot w waits for (zero: w is nil).
func (w *Warm) Target() Target {
	if w == nil {
		return Target{}
	}
	return w.t
}

// Bounds on the lines other replicas' joins build: a forged or confused
// join holds a slot no longer than maxRemoteWait (a cold prompt of a whole
// long context evaluates within it on a GPU; a waiter that would wait
// longer is kept for it only that long elsewhere), and a slot's line holds
// at most maxLine waiters.
const (
	maxRemoteWait = 2 * time.Minute
	maxLine       = 256
)

// joinRemoteLocked puts another replica's waiter in the line of the slot
// its Owner take holds (or last held), in the order the waiters joined;
// a slot free and kept for nobody is kept for it at once. A join naming a
// take this model does not know is dropped: that waiter will not find
// its slot kept here, as before lines were shared.
func (s *Slots) joinRemoteLocked(ev SlotEvent, now int64) {
	ss := s.targets[ev.T]
	i := slices.IndexFunc(ss, func(sl modelSlot) bool { return uint64(sl.take) == ev.Owner })
	if i < 0 || ev.Owner == 0 {
		return
	}
	e := waiting{ticket: ev.ID, at: ev.At * 1000, until: ev.Until * 1000}
	// What another replica claims is held to what a waiter could have:
	// joined no earlier than it could still be waiting (an older claim
	// would go before every real waiter), waiting at most maxRemoteWait,
	// and no more of them than maxLine (joins beyond are dropped).
	e.until = min(e.until, now+int64(maxRemoteWait))
	e.at = min(max(e.at, now-int64(maxRemoteWait)), now)
	if e.until <= now {
		return
	}
	sl := &ss[i]
	if len(sl.line) >= maxLine || sl.heldFor == e.ticket || slices.ContainsFunc(sl.line, func(x waiting) bool { return x.ticket == e.ticket }) {
		return
	}
	k, _ := slices.BinarySearchFunc(sl.line, e, func(x, y waiting) int {
		if x.at != y.at {
			return cmpInt64(x.at, y.at)
		}
		return cmpInt64(int64(x.ticket>>1), int64(y.ticket>>1))
	})
	sl.line = slices.Insert(sl.line, k, e)
	switch {
	case !sl.busy && !sl.keptLocked(now):
		s.handOnLocked(ev.T, i, now)
	case k < len(sl.line)-1:
		// Ahead of waiters that joined before it was heard: they are
		// later than they reckoned, and one may no longer be in time.
		s.wakeLocked(ev.T)
	}
}

func cmpInt64(a, b int64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}
