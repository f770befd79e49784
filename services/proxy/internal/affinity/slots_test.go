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
