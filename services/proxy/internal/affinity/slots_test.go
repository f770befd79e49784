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
	if i != 0 || j != 1 {
		t.Fatalf("took %d, %d; want 0, 1", i, j)
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
	if k := s.Take(a, 4, other, now); k != 0 {
		t.Fatalf("a miss took slot %d, want 0", k)
	}
	s.Release(a, 0)
	if h, c := s.Free(a, hot, now), s.Free(a, cold, now); h != 0 || c != 5 {
		t.Fatalf("after the miss: hot %d, cold %d; want 0, 5", h, c)
	}
	// A prompt is forgotten TTL after its slot was taken.
	if got := s.Free(a, cold, now.Add(2*time.Hour)); got != 0 {
		t.Fatalf("after the TTL: %d blocks", got)
	}
	// More requests than slots: the model records nothing.
	for range 4 {
		s.Take(a, 4, other, now)
	}
	if k := s.Take(a, 4, hot, now); k != -1 {
		t.Fatalf("a fifth request took slot %d", k)
	}
	s.Release(a, -1)
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
