package affinity

import (
	"testing"
	"time"
)

// The model fills slots as Ollama does: the free slot with the longest
// prefix, ties to the lowest; a miss overwrites slot 0 however popular its
// prompt, and a prompt whose slot is busy counts as not cached.
func TestSlotsFollowOllama(t *testing.T) {
	s := NewSlots(time.Hour, 1000)
	a := Target{"a", "m"}
	now := time.Now()
	hot, cold, other := chain(100, 5), chain(200, 5), chain(300, 5)

	i := s.Take(a, 4, hot, now)  // empty: slot 0
	j := s.Take(a, 4, cold, now) // slot 0 busy: slot 1
	if si, sj := slotOf(s, a, i), slotOf(s, a, j); si != 0 || sj != 1 {
		t.Fatalf("took %d, %d; want 0, 1", si, sj)
	}
	if got := s.Free(a, hot, now); got != 0 {
		t.Fatalf("hot's slot is busy, yet %d blocks free", got)
	}
	s.Release(a, i)
	s.Release(a, j)
	if got := s.Free(a, chain(100, 8), now); got != 5 {
		t.Fatalf("an extension of hot finds %d blocks, want 5", got)
	}
	// A miss takes the lowest free slot: hot's, not the older cold one.
	k := s.Take(a, 4, other, now)
	if got := slotOf(s, a, k); got != 0 {
		t.Fatalf("a miss took slot %d, want 0", got)
	}
	s.Release(a, k)
	if h, c := s.Free(a, hot, now), s.Free(a, cold, now); h != 0 || c != 5 {
		t.Fatalf("after the miss: hot %d, cold %d; want 0, 5", h, c)
	}
	// A prompt is forgotten TTL after its slot was taken.
	if got := s.Free(a, cold, now.Add(2*time.Hour)); got != 0 {
		t.Fatalf("after the TTL: %d blocks", got)
	}
}

// A take that finds every modelled slot busy runs on the backend all the
// same (a release the model has not heard yet freed its slot, or the
// backend queues it): it takes the next slot released, as Ollama would
// give it the free slot; its own release before that only forgets it.
func TestSlotsTakeWhenFull(t *testing.T) {
	s := NewSlots(time.Hour, 1000)
	a := Target{"a", "m"}
	now := time.Now()
	hot, other, late := chain(100, 5), chain(200, 5), chain(300, 5)
	h := s.Take(a, 2, hot, now)
	o := s.Take(a, 2, other, now)
	l := s.Take(a, 2, late, now)
	if l == 0 || slotOf(s, a, l) != -1 {
		t.Fatalf("a third take of two busy slots: %d in slot %d; want waiting", l, slotOf(s, a, l))
	}
	s.Release(a, h)
	if got := slotOf(s, a, l); got != 0 {
		t.Fatalf("the waiting take is in slot %d after slot 0's release, want 0", got)
	}
	if s.Free(a, hot, now) != 0 || s.Held(a, late, now) != 5 {
		t.Fatalf("slot 0 still offers hot (%d blocks free) or misses late", s.Free(a, hot, now))
	}
	s.Release(a, l)
	if s.Free(a, late, now) != 5 {
		t.Fatal("the late take's release did not free its slot")
	}
	// Released before any slot came back: forgotten, the next release
	// frees its slot as usual.
	l2 := s.Take(a, 2, late, now)
	l3 := s.Take(a, 2, hot, now)
	s.Release(a, l3)
	s.Release(a, o)
	if s.Free(a, other, now) != 5 || slotOf(s, a, l2) != 0 {
		t.Fatalf("other free %d, late in slot %d", s.Free(a, other, now), slotOf(s, a, l2))
	}
	s.Release(a, l2)
	// The waiting takes are bounded by the slots: beyond, nothing is
	// modelled.
	for range 4 {
		if s.Take(a, 2, other, now) == 0 {
			t.Fatal("a take within the bound was not modelled")
		}
	}
	if got := s.Take(a, 2, other, now); slotOf(s, a, got) != -1 || len(s.pending[a]) != 2 {
		t.Fatalf("a fifth take on two slots: in slot %d, %d waiting; want none, 2", slotOf(s, a, got), len(s.pending[a]))
	}
	s.Release(a, 0)
}

// A take that finds only a slot kept for a waiting request takes it (the
// backend knows nothing of keeping): the waiter is first in line again.
func TestSlotsTakeKeptSlot(t *testing.T) {
	s, a, hot := NewSlots(time.Hour, 1000), Target{"a", "m"}, chain(100, 20)
	later, w, i := joinBusy(t, s, a, hot, 1)
	s.release(a, i, later)
	if r, _, _, _ := s.Ready(w, hot, later); !r {
		t.Fatal("not kept for the waiter")
	}
	j := s.Take(a, 1, chain(500, 5), later) // another replica's grant, say
	if slotOf(s, a, j) != 0 {
		t.Fatal("the kept slot was not taken")
	}
	if r, _, _, holds := s.Ready(w, hot, later); r || holds {
		t.Fatalf("the waiter is ready %t, its slot holds its prompt %t: want false, false", r, holds)
	}
	s.release(a, j, later)
	if s.FreeFor(a, chain(500, 5), later, w) != 5 || s.Free(a, chain(500, 5), later) != 0 {
		t.Fatal("the slot is not kept for the waiter again")
	}
	s.Leave(w)
	if s.Waiting() != 0 {
		t.Fatalf("waiting %d after Leave", s.Waiting())
	}
}

// slotOf is the slot take id holds in s's model of t (-1: none).
func slotOf(s *Slots, t Target, id Taken) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	for i, sl := range s.targets[t] {
		if sl.busy && sl.take == id {
			return i
		}
	}
	return -1
}

// A slot keeps at most maxBlocks leading blocks of a prompt.
func TestSlotsKeepAContext(t *testing.T) {
	s := NewSlots(time.Hour, 3)
	a := Target{"a", "m"}
	now := time.Now()
	s.Release(a, s.Take(a, 1, chain(1, 10), now))
	if got := s.Free(a, chain(1, 10), now); got != 3 {
		t.Fatalf("%d blocks, want 3", got)
	}
}

// Evicts is the worth of what a cold prompt would overwrite: the decayed
// request count of the group in the free slot Ollama would give it.
func TestSlotsEvicts(t *testing.T) {
	s := NewSlots(time.Hour, 1000)
	a, b, c := Target{"a", "m"}, Target{"b", "m"}, Target{"c", "m"}
	now := time.Now()
	for range 5 { // a's slot 0 holds a group asked five times
		s.Release(a, s.Take(a, 2, chain(100, 5), now))
	}
	s.Release(b, s.Take(b, 2, chain(200, 5), now)) // b's: asked once
	cold := chain(900, 5)
	ea, eb, ec := s.Evicts(a, cold, now), s.Evicts(b, cold, now), s.Evicts(c, cold, now)
	if ea < 4.99 || ea > 5 || eb < 0.99 || eb > 1 || ec != 0 {
		t.Fatalf("evicts a %.2f, b %.2f, unknown c %.2f; want 5, 1, 0", ea, eb, ec)
	}
	if got := s.Evicts(a, chain(100, 8), now); got != 0 {
		t.Fatalf("a prompt finding itself evicts %.2f", got)
	}
	// The worth fades by half every popHalfLife.
	if got := s.Evicts(a, cold, now.Add(popHalfLife)); got < 2.49 || got > 2.51 {
		t.Fatalf("after a half-life %.2f, want 2.5", got)
	}
	// Slot 0 busy: the cold prompt would take slot 1, empty.
	i := s.Take(a, 2, chain(100, 5), now)
	if got := s.Evicts(a, cold, now); got != 0 {
		t.Fatalf("with slot 0 busy evicts %.2f, want 0 (slot 1 is empty)", got)
	}
	s.Release(a, i)
	// The counts stay bounded.
	for h := range uint64(2 * maxPop) {
		s.Release(c, s.Take(c, 1, chain(10_000+h*10, 1), now.Add(time.Duration(h)*time.Minute)))
	}
	if len(s.pop) > maxPop {
		t.Fatalf("%d groups counted, bound %d", len(s.pop), maxPop)
	}
}

// Kept counts a free slot kept for a waiter against requests that arrived
// after the waiter joined its line, not against the waiter itself, nor
// against requests that came before it (they keep their place).
func TestSlotsKept(t *testing.T) {
	s, a, hot := NewSlots(time.Hour, 1000), Target{"a", "m"}, chain(100, 20)
	joined, w, i := joinBusy(t, s, a, hot, 4)
	if n, _ := s.Kept(a, joined, joined.Add(time.Millisecond), 0); n != 0 {
		t.Fatalf("kept %d while the slot is still busy", n)
	}
	released := joined.Add(10 * time.Millisecond)
	s.release(a, i, released)
	n, lapse := s.Kept(a, released, released, 0)
	if n != 1 || !lapse.Equal(joined.Add(w.Wait)) {
		t.Fatalf("kept %d, lapsing at %v; want 1 at the waiter's longest wait %v", n, lapse, joined.Add(w.Wait))
	}
	if n, _ := s.Kept(a, released, joined.Add(-time.Millisecond), 0); n != 0 {
		t.Fatal("kept against a request that arrived before the waiter joined")
	}
	if n, _ := s.Kept(a, released, released, w.Ticket()); n != 0 {
		t.Fatal("kept against its own waiter")
	}
	if n, _ := s.Kept(a, joined.Add(w.Wait), joined.Add(w.Wait), 0); n != 0 {
		t.Fatal("still kept after the waiter's longest wait")
	}
	s.Leave(w)
	if n, _ := s.Kept(a, released, released, 0); n != 0 {
		t.Fatal("still kept after the waiter left")
	}
}

// joinBusy teaches s's timing for t, takes one of t's n slots with hot
// and, 220 ms later (when the slot is due back sooner than hot would
// evaluate), joins that slot's line with hot: when it joined, its wait,
// and the take.
func joinBusy(t *testing.T, s *Slots, a Target, hot *Prompt, n int) (time.Time, *Warm, Taken) {
	t.Helper()
	now := time.Now()
	teach(s, a, now)
	i := s.Take(a, n, hot, now)
	joined := now.Add(220 * time.Millisecond)
	w, ok := s.JoinWarm([]Target{a}, hot, joined)
	if !ok {
		t.Fatal("did not join the busy slot's line")
	}
	return joined, w, i
}

// teach gives s's timing for t: warm requests held a slot 100 ms, and a
// cold one of 10 blocks 100 ms more (10 ms a block).
func teach(s *Slots, t Target, now time.Time) {
	p := chain(9000, 10)
	s.release(t, s.Take(t, 4, p, now), now.Add(300*time.Millisecond)) // cold, before any warm: not learnt
	s.release(t, s.Take(t, 4, p, now), now.Add(100*time.Millisecond))
	s.release(t, s.Take(t, 4, chain(9100, 10), now), now.Add(200*time.Millisecond))
}

// A prompt whose only slot is busy waits for it when the slot should be
// back sooner than its blocks would take to evaluate; released, the slot is
// kept for the first in its line: free to it, busy to everyone else.
func TestSlotsWarmLine(t *testing.T) {
	s := NewSlots(time.Hour, 1000)
	a := Target{"a", "m"}
	now := time.Now()
	hot := chain(100, 20)
	if _, ok := s.JoinWarm([]Target{a}, hot, now); ok {
		t.Fatal("joined a line with nothing measured")
	}
	teach(s, a, now)
	i := s.Take(a, 4, hot, now)
	if _, ok := s.JoinWarm([]Target{a}, chain(500, 20), now); ok {
		t.Fatal("joined a line for a slot holding none of the prompt")
	}
	// Back in about 100 ms + 20 blocks * 10 ms: no sooner than evaluating
	// the prompt takes (200 ms). After 140 ms it should be back within
	// 160 ms, sooner, but not within joinMargin of it (150 ms). After
	// 220 ms, it is.
	if _, ok := s.JoinWarm([]Target{a}, hot, now.Add(90*time.Millisecond)); ok {
		t.Fatal("joined a line for a slot not back in time")
	}
	if _, ok := s.JoinWarm([]Target{a}, hot, now.Add(140*time.Millisecond)); ok {
		t.Fatal("joined a line for a slot due back on a thin margin (160 of 200 ms)")
	}
	later := now.Add(220 * time.Millisecond)
	w1, ok := s.JoinWarm([]Target{a}, hot, later)
	if !ok || w1.Wait != 200*time.Millisecond {
		t.Fatalf("joined %t, wait %v; want true, 200ms", ok, w1.Wait)
	}
	if _, ok := s.JoinWarm([]Target{a}, hot, now.Add(150*time.Millisecond)); ok {
		t.Fatal("a second joined the line: back in 150 ms, then 100 ms for the first")
	}
	later = now.Add(310 * time.Millisecond) // overdue: 100 ms for the first
	w2, ok := s.JoinWarm([]Target{a}, hot, later)
	if !ok {
		t.Fatal("the second in line did not join (overdue, then 100 ms for the first)")
	}
	if ready, left, rel, holds := s.Ready(w2, hot, later); ready || !holds || left != 100*time.Millisecond || rel == nil {
		t.Fatalf("second in line: ready %t, holds %t, left %v", ready, holds, left)
	}
	if s.Waiting() != 2 {
		t.Fatalf("waiting %d, want 2", s.Waiting())
	}
	_, _, rel, _ := s.Ready(w1, hot, later)
	s.release(a, i, later)
	select {
	case <-rel:
	default:
		t.Fatal("release did not wake the line")
	}
	// Kept for w1: free to it, not to w2 nor to a newcomer.
	if r1, _, _, _ := s.Ready(w1, hot, later); !r1 {
		t.Fatal("w1 not ready after the release")
	}
	if r2, _, _, _ := s.Ready(w2, hot, later); r2 || s.Free(a, hot, later) != 0 || s.FreeFor(a, hot, later, w1) != 20 {
		t.Fatal("the kept slot is free to others")
	}
	k := s.TakeFor(a, 4, hot, later, w1)
	if got := slotOf(s, a, k); got != 0 {
		t.Fatalf("w1 took slot %d, want its 0", got)
	}
	s.Leave(w1)
	s.release(a, k, later)
	// Now kept for w2; w2 gives up: free to all again.
	if r2, _, _, _ := s.Ready(w2, hot, later); !r2 {
		t.Fatal("w2 not ready after the second release")
	}
	s.Leave(w2)
	if s.Free(a, hot, later) != 20 || s.Waiting() != 0 {
		t.Fatalf("after w2 left: free %d, waiting %d", s.Free(a, hot, later), s.Waiting())
	}
}

// A slot's worth is its group's requests over the slots holding the group:
// a second copy of a popular prompt is cheaper to overwrite than the only
// copy of a less popular one.
func TestEvictsCountsCopies(t *testing.T) {
	s := NewSlots(time.Hour, 1000)
	a, b := Target{"a", "m"}, Target{"b", "m"}
	now := time.Now()
	hot, warm := chain(100, 5), chain(200, 5)
	for range 3 {
		s.Release(a, s.Take(a, 1, hot, now))
	}
	s.Release(b, s.Take(b, 1, warm, now))
	s.Release(b, s.Take(b, 1, warm, now))
	cold := chain(900, 5)
	if ea, eb := s.Evicts(a, cold, now), s.Evicts(b, cold, now); ea <= eb {
		t.Fatalf("one copy: the popular slot is worth %v, the other %v", ea, eb)
	}
	c := Target{"c", "m"}
	s.Release(c, s.Take(c, 1, hot, now)) // a fourth request, a second copy
	s.Release(b, s.Take(b, 1, warm, now))
	if ea, eb := s.Evicts(a, cold, now), s.Evicts(b, cold, now); ea >= eb {
		t.Fatalf("two copies of 4 requests: %v each, the single copy of 3: %v", ea, eb)
	}
}

// Another replica's takes fill this model's slots as Ollama would, and
// their releases free them; a release never heard of does nothing.
func TestSlotsApplyRemote(t *testing.T) {
	s := NewSlots(time.Hour, 1000)
	a := Target{"a", "m"}
	now := time.Now()
	hot, other := chain(100, 5), chain(200, 5)
	s.Apply("r2", []SlotEvent{{T: a, ID: 1, Slots: 2, Chain: hot.Chain}, {T: a, ID: 2, Slots: 2, Chain: other.Chain}}, now)
	if s.Free(a, hot, now) != 0 || s.Held(a, hot, now) != 5 {
		t.Fatal("the other replica's busy slot is free here")
	}
	if k := s.Take(a, 2, chain(300, 5), now); slotOf(s, a, k) != -1 {
		t.Fatalf("a third request took slot %d of two busy ones", slotOf(s, a, k))
	} else {
		s.Release(a, k) // done before any slot came back
	}
	s.Apply("r3", []SlotEvent{{T: a, ID: 1}}, now) // another replica's number 1
	s.Apply("r2", []SlotEvent{{T: a, ID: 1}}, now)
	if s.Free(a, hot, now) != 5 || s.Free(a, other, now) != 0 {
		t.Fatalf("after r2's release: hot %d, other %d", s.Free(a, hot, now), s.Free(a, other, now))
	}
	// A grant made on the fleet's in-flight counts before this model heard
	// the release that made room: it lands in the slot that release frees.
	late := chain(300, 5)
	k := s.Take(a, 2, chain(400, 5), now) // hot's free slot
	l := s.Take(a, 2, late, now)          // none free here yet
	if slotOf(s, a, l) != -1 {
		t.Fatal("took a slot while both were busy")
	}
	s.Apply("r2", []SlotEvent{{T: a, ID: 2}}, now)
	if s.Free(a, other, now) != 0 || s.Held(a, late, now) != 5 {
		t.Fatal("r2's release left its slot to other, not to the waiting take")
	}
	s.Release(a, k)
	s.Release(a, l)
}

// A request waiting for a warm slot on one replica is in the slot's line
// on every replica: released, the slot is kept for it everywhere, so the
// other replica's request of the same prompt finds it kept (and joins the
// line behind) instead of taking it; the waiter's take lands in it.
func TestSlotsSharedLine(t *testing.T) {
	r1, r2 := NewSlots(time.Hour, 1000), NewSlots(time.Hour, 1000)
	a := Target{"a", "m"}
	now := time.Now()
	teach(r2, a, now)
	hot := chain(100, 20)
	// r1's request holds hot's slot; r2 hears of it.
	x := r1.Take(a, 4, hot, now)
	r2.Apply("r1", []SlotEvent{{T: a, ID: uint64(x), Slots: 4, Chain: hot.Chain}}, now)
	later := now.Add(220 * time.Millisecond)
	w, ok := r2.JoinWarm([]Target{a}, hot, later)
	if !ok {
		t.Fatal("r2's request did not wait for r1's busy slot")
	}
	r1.Apply("r2", []SlotEvent{w.JoinEvent()}, later)
	// r1's request ends: r1 keeps the slot for r2's waiter.
	r1.release(a, x, later)
	if got := r1.Free(a, hot, later); got != 0 {
		t.Fatalf("r1 offers the slot kept for r2's waiter: %d blocks free", got)
	}
	// r2 hears the release: its waiter is first.
	r2.Apply("r1", []SlotEvent{{T: a, ID: uint64(x)}}, later)
	if ready, _, _, _ := r2.Ready(w, hot, later); !ready {
		t.Fatal("r2's waiter is not ready after the release")
	}
	y := r2.TakeFor(a, 4, hot, later, w)
	r2.Leave(w)
	r1.Apply("r2", []SlotEvent{{T: a, ID: uint64(y), Slots: 4, Chain: hot.Chain, Ticket: w.Ticket()}, w.LeaveEvent()}, later)
	if r1.Held(a, hot, later) != 20 || r1.Free(a, hot, later) != 0 || r1.Waiting() != 0 {
		t.Fatalf("r1's model after r2's take: held %d, free %d, waiting %d", r1.Held(a, hot, later), r1.Free(a, hot, later), r1.Waiting())
	}
	// Another replica's waiter whose leave is lost keeps nothing beyond
	// its longest wait.
	r1.release(a, 0, later)
	r1.Apply("r2", []SlotEvent{{T: a, ID: uint64(y)}}, later)
	ghost := SlotEvent{T: a, Kind: SlotJoin, ID: 99, Owner: uint64(y), At: later.UnixMicro(), Until: later.Add(100 * time.Millisecond).UnixMicro()}
	r1.Apply("r3", []SlotEvent{ghost}, later)
	if r1.Free(a, hot, later) != 0 {
		t.Fatal("a free slot joined by another replica's waiter is not kept for it")
	}
	if got := r1.Free(a, hot, later.Add(time.Second)); got != 20 {
		t.Fatalf("a lost leave keeps the slot past the wait: %d blocks free", got)
	}
}

// Another replica's waiter heard after this replica's joined, but that
// joined first, goes ahead of it in the line, and this replica's waiter is
// woken to reckon with it (it may no longer be in time).
func TestSlotsRemoteJoinAheadWakes(t *testing.T) {
	r1, r2 := NewSlots(time.Hour, 1000), NewSlots(time.Hour, 1000)
	a := Target{"a", "m"}
	now := time.Now()
	teach(r1, a, now)
	teach(r2, a, now)
	hot := chain(100, 20)
	x := r1.Take(a, 4, hot, now)
	r2.Apply("r1", []SlotEvent{{T: a, ID: uint64(x), Slots: 4, Chain: hot.Chain}}, now)
	w2, ok := r2.JoinWarm([]Target{a}, hot, now.Add(220*time.Millisecond))
	if !ok {
		t.Fatal("r2's request did not wait")
	}
	mine, ok := r1.JoinWarm([]Target{a}, hot, now.Add(225*time.Millisecond))
	if !ok {
		t.Fatal("r1's request did not wait")
	}
	heard := now.Add(230 * time.Millisecond)
	_, before, woken, _ := r1.Ready(mine, hot, heard)
	r1.Apply("r2", []SlotEvent{w2.JoinEvent()}, heard)
	select {
	case <-woken:
	default:
		t.Fatal("r1's waiter was not woken when a waiter went ahead of it")
	}
	if _, after, _, _ := r1.Ready(mine, hot, heard); after != before+100*time.Millisecond {
		t.Fatalf("r1's waiter expects its slot in %v, was %v: want one warm request (100 ms) more", after, before)
	}
}

// Another replica's joins are held to what a waiter could have: a claim
// of a year's wait keeps a slot maxRemoteWait at most, a claim of having
// joined long ago does not go before a real waiter who joined within
// that, and a slot's line takes maxLine joins, no more.
func TestSlotsRemoteJoinBounds(t *testing.T) {
	r := NewSlots(time.Hour, 1000)
	a := Target{"a", "m"}
	now := time.Now()
	hot := chain(100, 20)
	x := r.Take(a, 1, hot, now)
	local := SlotEvent{T: a, Kind: SlotJoin, ID: 1, Owner: uint64(x), At: now.UnixMicro(), Until: now.Add(time.Second).UnixMicro()}
	forged := SlotEvent{T: a, Kind: SlotJoin, ID: 2, Owner: uint64(x), At: 1, Until: now.Add(365 * 24 * time.Hour).UnixMicro()}
	r.Apply("r2", []SlotEvent{local, forged}, now)
	r.mu.Lock()
	line := append([]waiting(nil), r.targets[a][0].line...)
	r.mu.Unlock()
	if len(line) != 2 || line[0].ticket != 2 || line[0].at < now.Add(-maxRemoteWait).UnixNano() {
		t.Fatalf("line %+v: the forged join's arrival was not held to within maxRemoteWait", line)
	}
	if limit := now.Add(maxRemoteWait).UnixNano(); line[0].until > limit {
		t.Fatalf("the forged join waits until %d, beyond now + maxRemoteWait (%d)", line[0].until, limit)
	}
	r.release(a, x, now)
	if got := r.Free(a, hot, now.Add(maxRemoteWait+time.Second)); got != 20 {
		t.Fatalf("a slot is kept past maxRemoteWait for a forged join: %d blocks free", got)
	}
	y := r.Take(a, 1, hot, now)
	var flood []SlotEvent
	for i := range maxLine + 10 {
		flood = append(flood, SlotEvent{T: a, Kind: SlotJoin, ID: uint64(100 + i), Owner: uint64(y), At: now.UnixMicro(), Until: now.Add(time.Second).UnixMicro()})
	}
	r.Apply("r2", flood, now)
	r.mu.Lock()
	n := len(r.targets[a][0].line)
	r.mu.Unlock()
	if n != maxLine {
		t.Fatalf("a slot's line holds %d remote waiters, want at most %d", n, maxLine)
	}
}
