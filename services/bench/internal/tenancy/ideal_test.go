package tenancy

import (
	"slices"
	"testing"
	"time"
)

const tms = time.Millisecond

func fixed(d time.Duration) func(bool, int) time.Duration {
	return func(bool, int) time.Duration { return d }
}

func TestIdealAlone(t *testing.T) {
	// One slot of 100 ms: the second request waits for the first, the
	// third for the second.
	got := IdealSpec{Slots: 1, Service: fixed(100 * tms), Light: []time.Duration{0, 10 * tms, 150 * tms}}.Run()
	if want := []time.Duration{0, 90 * tms, 50 * tms}; !slices.Equal(got.Waits, want) {
		t.Errorf("waits %v, want %v", got.Waits, want)
	}
	if got.HeavyServed != 0 {
		t.Errorf("heavy served %d with no heavy key", got.HeavyServed)
	}
}

func TestIdealBacklogAndKeep(t *testing.T) {
	// Two slots held by a flood whose requests began together at 0 and
	// take 100 ms: releases come two at a time at 100, 200, 300 ms.
	spec := IdealSpec{Slots: 2, Service: fixed(100 * tms), Light: []time.Duration{250 * tms}, Backlog: true}
	got := spec.Run()
	if got.Waits[0] != 50*tms {
		t.Errorf("keep 0: light waited %v, want 50ms (the next release)", got.Waits[0])
	}
	// At 300 ms the light request takes one slot, the flood the other.
	if got.HeavyServed != 5 {
		t.Errorf("keep 0: heavy served %d, want 5 (2 at 100 and 200 ms, 1 at 300 ms)", got.HeavyServed)
	}
	spec.Keep = 1
	got = spec.Run()
	if got.Waits[0] != 0 {
		t.Errorf("keep 1: light waited %v, want 0 (a slot kept free)", got.Waits[0])
	}
	if got.HeavyServed != 2 {
		t.Errorf("keep 1: heavy served %d, want 2 (one slot at 100 and at 200 ms)", got.HeavyServed)
	}
}

func TestIdealLightGoesFirst(t *testing.T) {
	// An open-loop heavy key that queued first still yields every release
	// to a light waiter; its waiters beyond the bound are refused.
	spec := IdealSpec{
		Slots: 1, Service: fixed(100 * tms),
		Heavy: []time.Duration{0, 1 * tms, 2 * tms, 3 * tms},
		Light: []time.Duration{50 * tms, 60 * tms},
		Bound: 2,
	}
	got := spec.Run()
	if want := []time.Duration{50 * tms, 140 * tms}; !slices.Equal(got.Waits, want) {
		t.Errorf("waits %v, want %v", got.Waits, want)
	}
	if got.HeavyServed != 1 {
		t.Errorf("heavy served %d before the light key's last start, want 1", got.HeavyServed)
	}
}

func TestIdealLeadSetsThePhase(t *testing.T) {
	// The flood began 2.17 s before the phase: with 200 ms requests its
	// slots free at 30 ms, so a request at 10 ms waits 20 ms.
	spec := IdealSpec{Slots: 2, Service: fixed(200 * tms), Light: []time.Duration{10 * tms}, Backlog: true, Lead: 2170 * tms}
	if got := spec.Run().Waits[0]; got != 20*tms {
		t.Errorf("waited %v, want 20ms", got)
	}
}

func TestIdealTableAndSweep(t *testing.T) {
	spec := SaturationSpec{Backends: 2, Cap: 2, ChunkDelay: 10 * tms, MaxPerKey: 32, Req: Request{Output: 20}, Duration: 10 * time.Second, Warmup: 2 * time.Second}
	rows := idealTable(neighbourIdeal(spec, 5, seedA))
	if len(rows) != spec.Slots()+2 {
		t.Fatalf("%d rows, want one per keep from 0 to %d, one keeping the peak and one preempting", len(rows), spec.Slots()-1)
	}
	if pk := rows[spec.Slots()]; !pk.Peak || pk.Preempt || pk.Keep != 0 || pk.HeavyServed >= rows[0].HeavyServed {
		t.Errorf("peak row: %+v", pk)
	}
	for i, r := range rows[:spec.Slots()] {
		if r.Keep != i || r.Preempt || r.AloneP99 != rows[0].AloneP99 {
			t.Errorf("row %d: %+v", i, r)
		}
		if i > 0 && r.HeavyServed > rows[i-1].HeavyServed {
			t.Errorf("keeping %d slots served the heavy key more (%d) than keeping %d (%d)", i, r.HeavyServed, i-1, rows[i-1].HeavyServed)
		}
	}
	// Preempting, the light key waits only when it holds every slot, as
	// alone.
	if p := rows[spec.Slots()+1]; !p.Preempt || p.Keep != 0 || p.Stopped == 0 || p.BesideP99 != p.AloneP99 {
		t.Errorf("preempting row: %+v", p)
	}
	sw := SweepIdeal(spec, 5, 5, 20)
	for _, part := range [][]SweepRow{sw.Neighbour, sw.Priority} {
		if len(part) != spec.Slots()+2 {
			t.Fatalf("%d sweep rows, want %d", len(part), spec.Slots()+2)
		}
		for _, r := range part {
			if r.Draws != 20 || r.Met > r.Draws || r.RatioP10 > r.RatioP50 || r.RatioP50 > r.RatioP90 || r.RatioP10 <= 0 {
				t.Errorf("sweep row %+v", r)
			}
		}
	}
}

func TestArrivalsSeeded(t *testing.T) {
	a, b := arrivals(50, 10*time.Second, 2), arrivals(50, 10*time.Second, 2)
	if !slices.Equal(a, b) {
		t.Fatal("the same seed gave different schedules")
	}
	if n := len(a); n < 400 || n > 600 {
		t.Errorf("%d arrivals in 10 s at 50/s", n)
	}
	if !slices.IsSorted(a) || a[len(a)-1] > 10*time.Second {
		t.Error("arrivals out of order or past the end")
	}
}

func TestIdealPreempt(t *testing.T) {
	// Two slots held by a flood; with preemption a light request stops
	// the flood's latest start and takes its slot at once.
	spec := IdealSpec{Slots: 2, Service: fixed(100 * tms), Light: []time.Duration{250 * tms}, Backlog: true, Preempt: true}
	got := spec.Run()
	if got.Waits[0] != 0 || got.Stopped != 1 || got.Wasted != 50*tms {
		t.Errorf("waited %v, stopped %d (%v), want 0, 1 (50ms)", got.Waits[0], got.Stopped, got.Wasted)
	}
	if got.HeavyServed != 3 {
		t.Errorf("heavy served %d, want 3 (2 at 100 ms and 2 at 200 ms, one stopped)", got.HeavyServed)
	}
	// An open-loop heavy request stopped starts over first in its queue.
	spec = IdealSpec{Slots: 1, Service: fixed(100 * tms), Heavy: []time.Duration{0, 1 * tms}, Light: []time.Duration{30 * tms, 200 * tms}, Preempt: true}
	got = spec.Run()
	if want := []time.Duration{0, 0}; !slices.Equal(got.Waits, want) || got.Stopped != 2 {
		t.Errorf("waits %v, stopped %d; want %v, 2 (request 0 at 30 ms, then request 0 again at 200 ms)", got.Waits, got.Stopped, want)
	}
}

func TestIdealPeak(t *testing.T) {
	// Two light requests waited together at 250 ms: for a second after,
	// the flood leaves two slots free for the light key, so a request at
	// 1,250 ms finds one. Without the peak the flood took both slots back
	// at 400 ms and the request waits for a release at 1,300 ms.
	spec := IdealSpec{Slots: 2, Service: fixed(100 * tms), Light: []time.Duration{250 * tms, 251 * tms, 1250 * tms}, Backlog: true}
	if got, want := spec.Run().Waits, []time.Duration{50 * tms, 49 * tms, 50 * tms}; !slices.Equal(got, want) {
		t.Errorf("no peak: waits %v, want %v", got, want)
	}
	spec.Peak = time.Second
	if got, want := spec.Run().Waits, []time.Duration{50 * tms, 49 * tms, 0}; !slices.Equal(got, want) {
		t.Errorf("peak: waits %v, want %v", got, want)
	}
}
