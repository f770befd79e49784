package affinity

import (
	"fmt"
	"testing"
)

// Every replica must choose the same home for a prompt, whatever its
// version: the score is pinned.
func TestHomeScoreIsStable(t *testing.T) {
	got := fmt.Sprintf("%016x %016x", HomeScore(1, "a"), HomeScore(0x0123456789abcdef, "ollama-gpu-3"))
	if want := "0addcfab72e610c8 b700dcbe8c47e78c"; got != want {
		t.Fatalf("HomeScore changed: %s, want %s", got, want)
	}
}

// Homes spread: 4,000 first blocks over four backends land about a quarter
// on each, and removing one backend moves only the prompts whose home it
// was (rendezvous hashing).
func TestHomeSpreadsAndMovesLittle(t *testing.T) {
	backends := []string{"a", "b", "c", "d"}
	home := func(h uint64, bs []string) string {
		var best string
		var score uint64
		for _, b := range bs {
			if s := HomeScore(h, b); best == "" || s > score {
				best, score = b, s
			}
		}
		return best
	}
	per := map[string]int{}
	moved := 0
	for i := range 4000 {
		h := finish(uint64(i) + 1)
		was := home(h, backends)
		per[was]++
		if now := home(h, backends[:3]); was != "d" && now != was {
			moved++
		}
	}
	for _, b := range backends {
		if per[b] < 850 || per[b] > 1150 {
			t.Errorf("backend %s is home to %d of 4000", b, per[b])
		}
	}
	if moved != 0 {
		t.Errorf("removing d moved %d prompts whose home it was not", moved)
	}
	if (&Prompt{}).Home() != 0 || (*Prompt)(nil).Home() != 0 || (&Prompt{Chain: []uint64{7, 8}}).Home() != 7 {
		t.Error("Home is not the first block's hash")
	}
}
