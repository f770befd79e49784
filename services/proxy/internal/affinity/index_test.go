package affinity

import (
	"testing"
	"time"
)

func chain(from, n uint64) *Prompt {
	p := &Prompt{}
	for i := range n {
		p.Chain = append(p.Chain, from+i)
	}
	return p
}

func TestLookupIsTheLeadingRun(t *testing.T) {
	x := NewIndex(100, time.Minute)
	a, b := Target{"a", "m"}, Target{"b", "m"}
	now := time.Now()
	x.Insert(a, chain(1, 5), now, 0, nil)
	tests := []struct {
		name string
		t    Target
		p    *Prompt
		want int
	}{
		{"same prompt", a, chain(1, 5), 5},
		{"longer prompt", a, chain(1, 9), 5},
		{"shorter prompt", a, chain(1, 3), 3},
		{"other start", a, chain(50, 5), 0},
		{"other backend", b, chain(1, 5), 0},
		{"other model", Target{"a", "n"}, chain(1, 5), 0},
		{"gap", a, &Prompt{Chain: []uint64{1, 2, 99, 4}}, 2},
	}
	for _, tt := range tests {
		if got := x.Lookup(tt.t, tt.p, now).Blocks; got != tt.want {
			t.Errorf("%s: %d blocks, want %d", tt.name, got, tt.want)
		}
	}
}

// The index never holds more than its bound; the least recently inserted
// go first, and what was inserted again stays.
func TestIndexBound(t *testing.T) {
	x := NewIndex(10, time.Hour)
	a := Target{"a", "m"}
	now := time.Now()
	x.Insert(a, chain(100, 4), now, 0, nil) // old
	x.Insert(a, chain(200, 4), now, 0, nil) // kept warm below
	for i := range uint64(50) {
		x.Insert(a, chain(200, 4), now, 0, nil)
		x.Insert(a, chain(1000+10*i, 1), now, 0, nil)
		if n := x.Len(); n > 10 {
			t.Fatalf("%d entries over a bound of 10", n)
		}
	}
	if got := x.Lookup(a, chain(100, 4), now).Blocks; got != 0 {
		t.Errorf("the oldest chain still matches %d blocks", got)
	}
	if got := x.Lookup(a, chain(200, 4), now).Blocks; got != 4 {
		t.Errorf("the warm chain matches %d of 4 blocks", got)
	}
	if x.Len() != 10 {
		t.Errorf("%d entries, want the bound 10", x.Len())
	}
}

// Each target holds at most its own bound (what its slots can hold), its
// oldest entries going first, without touching the other targets'.
func TestIndexPerTargetBound(t *testing.T) {
	a, b := Target{"a", "m"}, Target{"b", "m"}
	x := NewIndex(1000, time.Hour, PerTarget(func(t Target) int { return map[string]int{"a": 10, "b": 20}[t.Backend] }))
	now := time.Now()
	x.Insert(b, chain(1, 20), now, 0, nil)
	for i := range uint64(10) {
		x.Insert(a, chain(1000+100*i, 5), now, 0, nil)
	}
	if got := x.Lookup(a, chain(1900, 5), now).Blocks; got != 5 {
		t.Errorf("a's newest chain matches %d of 5", got)
	}
	if got := x.Lookup(a, chain(1800, 5), now).Blocks; got != 5 {
		t.Errorf("a's second newest matches %d of 5", got)
	}
	if got := x.Lookup(a, chain(1700, 5), now).Blocks; got != 0 {
		t.Errorf("a's third newest still matches %d blocks over a bound of 10", got)
	}
	if got := x.Lookup(b, chain(1, 20), now).Blocks; got != 20 {
		t.Errorf("b's chain matches %d of 20 after a's inserts", got)
	}
	if x.Len() != 30 {
		t.Errorf("%d entries, want 10 + 20", x.Len())
	}
	// The total bound still holds over targets, and an emptied target is
	// forgotten.
	y := NewIndex(8, time.Hour, PerTarget(func(Target) int { return 8 }))
	y.Insert(a, chain(1, 6), now, 0, nil)
	y.Insert(b, chain(100, 6), now, 0, nil)
	if y.Len() != 8 || y.Lookup(b, chain(100, 6), now).Blocks != 6 || y.Lookup(a, chain(1, 6), now).Blocks != 0 {
		t.Fatalf("%d entries; b %d, a %d", y.Len(), y.Lookup(b, chain(100, 6), now).Blocks, y.Lookup(a, chain(1, 6), now).Blocks)
	}
	y.Insert(b, chain(200, 6), now, 0, nil)
	if _, ok := y.targets[a]; ok {
		t.Error("a's emptied list is kept")
	}
}

// Entries age out TTL after their last insert, sessions too.
func TestIndexAgeing(t *testing.T) {
	ttl := 5 * time.Minute
	x := NewIndex(100, ttl)
	a := Target{"a", "m"}
	t0 := time.Now()
	p := chain(1, 3)
	p.Session = 77
	x.Insert(a, p, t0, 0, nil)
	if m := x.Lookup(a, p, t0.Add(ttl-time.Second)); m.Blocks != 3 || m.Session == 0 {
		t.Fatalf("before the TTL: %+v", m)
	}
	if m := x.Lookup(a, p, t0.Add(ttl+time.Second)); !m.Zero() {
		t.Fatalf("after the TTL: %+v", m)
	}
	// Used again: fresh for another TTL.
	x.Insert(a, chain(1, 2), t0.Add(ttl-time.Second), 0, nil)
	if m := x.Lookup(a, chain(1, 3), t0.Add(ttl+time.Second)); m.Blocks != 2 || m.Session != 0 {
		t.Fatalf("after a refresh of two blocks: %+v", m)
	}
}

// Insert reports what the others should hear: new hashes, and old ones
// only once they are older than the refresh interval.
func TestInsertReportsNewAndStale(t *testing.T) {
	x := NewIndex(100, time.Hour)
	a := Target{"a", "m"}
	t0 := time.Now()
	if got := x.Insert(a, chain(1, 3), t0, time.Minute, nil); len(got) != 3 {
		t.Fatalf("first insert reported %v", got)
	}
	if got := x.Insert(a, chain(1, 5), t0.Add(time.Second), time.Minute, nil); len(got) != 2 || got[0] != 4 {
		t.Fatalf("an extension reported %v, want [4 5]", got)
	}
	if got := x.Insert(a, chain(1, 5), t0.Add(2*time.Minute), time.Minute, nil); len(got) != 5 {
		t.Fatalf("a refresh reported %v, want all 5", got)
	}
	p := &Prompt{Session: 9}
	if got := x.Insert(a, p, t0, time.Minute, nil); len(got) != 1 || got[0] != 9 {
		t.Fatalf("a session reported %v", got)
	}
}

func TestMatchOrder(t *testing.T) {
	tests := []struct {
		a, b Match
		want bool
	}{
		{Match{Session: 1}, Match{Blocks: 50}, true},
		{Match{Session: 2}, Match{Session: 1, Blocks: 50}, true},
		{Match{Blocks: 3}, Match{Blocks: 2}, true},
		{Match{Blocks: 2}, Match{Blocks: 2}, false},
		{Match{}, Match{Blocks: 1}, false},
	}
	for _, tt := range tests {
		if got := tt.a.Better(tt.b); got != tt.want {
			t.Errorf("%+v better than %+v: %v", tt.a, tt.b, got)
		}
	}
}

func BenchmarkIndexLookupInsert(b *testing.B) {
	x := NewIndex(65536, time.Hour)
	p := chain(1, 40) // a 10 KB prompt in 256-byte blocks
	ts := []Target{{"a", "m"}, {"b", "m"}, {"c", "m"}, {"d", "m"}}
	now := time.Now()
	x.Insert(ts[0], p, now, 0, nil)
	b.ReportAllocs()
	for b.Loop() {
		for _, t := range ts {
			x.Lookup(t, p, now)
		}
		x.Insert(ts[0], p, now, time.Minute, nil)
	}
}

// A prompt in steady use is re-reported once the replicas last heard of
// it more than refresh ago, however recently it was used, so that the
// others' least-recently-used order keeps up; what another replica just
// sent counts as heard.
func TestInsertReportsWhatTheOthersHaveNotHeard(t *testing.T) {
	x := NewIndex(100, time.Hour)
	a := Target{"a", "m"}
	t0 := time.Now()
	refresh := 250 * time.Millisecond
	x.Insert(a, chain(1, 3), t0, refresh, nil)
	for i := 1; i <= 4; i++ { // used every 100 ms
		got := x.Insert(a, chain(1, 3), t0.Add(time.Duration(i)*100*time.Millisecond), refresh, nil)
		if want := map[int]int{1: 0, 2: 0, 3: 3, 4: 0}[i]; len(got) != want {
			t.Fatalf("use %d reported %v, want %d hashes", i, got, want)
		}
	}
	x.InsertHashes(a, []uint64{1, 2}, t0.Add(600*time.Millisecond))
	if got := x.Insert(a, chain(1, 3), t0.Add(700*time.Millisecond), refresh, nil); len(got) != 1 || got[0] != 3 {
		t.Fatalf("after another replica sent two blocks: %v, want [3]", got)
	}
}
