package routing

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func cand(backend, model string, cap int, loaded bool, weight int) Candidate {
	return Candidate{Key: Key{backend, model}, Cap: cap, Loaded: loaded, Weight: weight}
}

func TestPickOrder(t *testing.T) {
	tests := []struct {
		name  string
		busy  []Key // slots taken before the pick
		cands []Candidate
		want  string
	}{
		{"loaded wins over idle", nil, []Candidate{cand("a", "m", 4, false, 1), cand("b", "m", 4, true, 1)}, "b"},
		{"loaded but full loses", []Key{{"b", "m"}}, []Candidate{cand("a", "m", 4, false, 1), cand("b", "m", 1, true, 1)}, "a"},
		{"fewest in-flight for the model", []Key{{"a", "m"}}, []Candidate{cand("a", "m", 4, true, 1), cand("b", "m", 4, true, 1)}, "b"},
		{"then least backend load", []Key{{"a", "other"}}, []Candidate{cand("a", "m", 4, true, 1), cand("b", "m", 4, true, 1)}, "b"},
		{"then weight", nil, []Candidate{cand("a", "m", 4, true, 1), cand("b", "m", 4, true, 5)}, "b"},
		{"then order given", nil, []Candidate{cand("a", "m", 4, true, 1), cand("b", "m", 4, true, 1)}, "a"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := New(Options{MaxQueue: 1, MaxWait: time.Second}, nil)
			var held []*Slot
			for _, k := range tt.busy {
				s, err := r.Acquire(context.Background(), Tenant{}, []Candidate{{Key: k, Cap: 100}})
				if err != nil {
					t.Fatal(err)
				}
				held = append(held, s)
			}
			s, err := r.Acquire(context.Background(), Tenant{}, tt.cands)
			if err != nil {
				t.Fatal(err)
			}
			if s.Backend != tt.want {
				t.Fatalf("picked %s, want %s", s.Backend, tt.want)
			}
			s.Release()
			for _, h := range held {
				h.Release()
			}
			if got := r.InFlight(); len(got) != 0 {
				t.Fatalf("in-flight left: %v", got)
			}
		})
	}
}

func TestQueueBounds(t *testing.T) {
	r := New(Options{MaxQueue: 2, MaxWait: 100 * time.Millisecond}, nil)
	c := []Candidate{cand("a", "m", 1, true, 1)}
	held, err := r.Acquire(context.Background(), Tenant{}, c)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	errs := make(chan error, 2)
	for range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := r.Acquire(context.Background(), Tenant{}, c)
			errs <- err
		}()
	}
	waitFor(t, func() bool { return r.QueueLen() == 2 })
	if _, err := r.Acquire(context.Background(), Tenant{}, c); !errors.Is(err, ErrQueueFull) {
		t.Fatalf("third waiter: got %v, want ErrQueueFull", err)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if !errors.Is(err, ErrQueueTimeout) {
			t.Fatalf("waiter: got %v, want ErrQueueTimeout", err)
		}
	}
	held.Release()
	if r.QueueLen() != 0 || len(r.InFlight()) != 0 {
		t.Fatalf("queue %d, in-flight %v", r.QueueLen(), r.InFlight())
	}
}

func TestQueueIsFIFO(t *testing.T) {
	r := New(Options{MaxQueue: 100, MaxWait: 5 * time.Second}, nil)
	c := []Candidate{cand("a", "m", 1, true, 1)}
	held, _ := r.Acquire(context.Background(), Tenant{}, c)
	order := make(chan int, 10)
	var wg sync.WaitGroup
	for i := range 10 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s, err := r.Acquire(context.Background(), Tenant{}, c)
			if err != nil {
				t.Error(err)
				return
			}
			order <- i
			s.Release()
		}()
		waitFor(t, func() bool { return r.QueueLen() == i+1 })
	}
	held.Release()
	wg.Wait()
	close(order)
	want := 0
	for got := range order {
		if got != want {
			t.Fatalf("served %d, want %d", got, want)
		}
		want++
	}
}

func TestQueueSkipsWaiterThatCannotUseSlot(t *testing.T) {
	r := New(Options{MaxQueue: 10, MaxWait: 5 * time.Second}, nil)
	ha, _ := r.Acquire(context.Background(), Tenant{}, []Candidate{cand("a", "m", 1, true, 1)})
	hb, _ := r.Acquire(context.Background(), Tenant{}, []Candidate{cand("b", "m", 1, true, 1)})
	gotB := make(chan *Slot)
	go func() {
		s, _ := r.Acquire(context.Background(), Tenant{}, []Candidate{cand("b", "m", 1, true, 1)})
		gotB <- s
	}()
	waitFor(t, func() bool { return r.QueueLen() == 1 })
	gotA := make(chan *Slot)
	go func() {
		s, _ := r.Acquire(context.Background(), Tenant{}, []Candidate{cand("a", "m", 1, true, 1)})
		gotA <- s
	}()
	waitFor(t, func() bool { return r.QueueLen() == 2 })
	ha.Release() // only the second waiter can use it
	s := <-gotA
	if s.Backend != "a" {
		t.Fatalf("got %s", s.Backend)
	}
	s.Release()
	hb.Release()
	(<-gotB).Release()
}

func TestCancelWhileQueued(t *testing.T) {
	r := New(Options{MaxQueue: 10, MaxWait: 5 * time.Second}, nil)
	c := []Candidate{cand("a", "m", 1, true, 1)}
	held, _ := r.Acquire(context.Background(), Tenant{}, c)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { _, err := r.Acquire(ctx, Tenant{}, c); done <- err }()
	waitFor(t, func() bool { return r.QueueLen() == 1 })
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("got %v", err)
	}
	held.Release()
	if r.QueueLen() != 0 || len(r.InFlight()) != 0 {
		t.Fatal("leaked")
	}
}

// TestCapNeverExceeded hammers one router from many goroutines with random
// cancels and checks the cap at every grant, that every request that did
// not give up was served, and zero counts at the end.
func TestCapNeverExceeded(t *testing.T) {
	r := New(Options{MaxQueue: 10000, MaxWait: 10 * time.Second}, nil)
	cands := []Candidate{cand("a", "m", 3, true, 1), cand("b", "m", 2, false, 1)}
	var inA, inB, maxA, maxB, granted, patientGranted atomic.Int64
	const requests = 2000
	var wg sync.WaitGroup
	for i := range requests {
		wg.Add(1)
		go func() {
			defer wg.Done()
			patient := i%3 == 0
			ctx, cancel := context.WithTimeout(context.Background(), time.Duration(i%7)*time.Millisecond)
			defer cancel()
			if patient {
				ctx = context.Background()
			}
			s, err := r.Acquire(ctx, Tenant{}, cands)
			if err != nil {
				if patient || !errors.Is(err, context.DeadlineExceeded) {
					t.Errorf("request %d: %v", i, err)
				}
				return
			}
			granted.Add(1)
			if patient {
				patientGranted.Add(1)
			}
			in, mx := &inA, &maxA
			if s.Backend == "b" {
				in, mx = &inB, &maxB
			}
			n := in.Add(1)
			for {
				m := mx.Load()
				if n <= m || mx.CompareAndSwap(m, n) {
					break
				}
			}
			// Hold the slot a moment (not waiting for anything) so that
			// requests pile up in the queue and time out in it.
			time.Sleep(50 * time.Microsecond)
			in.Add(-1)
			s.Release()
			s.Release() // idempotent
		}()
	}
	wg.Wait()
	if want := int64((requests + 2) / 3); patientGranted.Load() != want {
		t.Fatalf("%d of %d requests without a deadline were served", patientGranted.Load(), want)
	}
	if maxA.Load() > 3 || maxB.Load() > 2 {
		t.Fatalf("cap exceeded: a=%d b=%d", maxA.Load(), maxB.Load())
	}
	if maxA.Load() < 3 || maxB.Load() < 1 {
		t.Fatalf("the cap was never reached (a=%d b=%d): the test exercised no contention", maxA.Load(), maxB.Load())
	}
	if got := r.InFlight(); len(got) != 0 || r.QueueLen() != 0 {
		t.Fatalf("in-flight %v queue %d", got, r.QueueLen())
	}
	t.Logf("%d of %d requests served", granted.Load(), requests)
}

// fakeRemote is the other replicas as the router sees them: share is this
// replica's share of every cap (0: all of it), held what the others hold.
type fakeRemote struct {
	share int
	held  map[Key]int
}

func (f fakeRemote) Share(k Key, cap int) int {
	if f.share == 0 {
		return cap
	}
	return f.share
}
func (f fakeRemote) Peers(k Key) []PeerLoad {
	if f.held[k] == 0 {
		return nil
	}
	return []PeerLoad{{Rank: 1, InFlight: f.held[k], Demand: f.held[k]}}
}
func (f fakeRemote) ShareOf(_ Key, rank, cap int) int {
	if rank == 0 {
		return f.Share(Key{}, cap)
	}
	return cap
}
func (f fakeRemote) Rank() int          { return 0 }
func (f fakeRemote) InFlight(k Key) int { return f.held[k] }
func (f fakeRemote) BackendInFlight(b string) int {
	n := 0
	for k, v := range f.held {
		if k.Backend == b {
			n += v
		}
	}
	return n
}

// The others' slots count towards the cap; beyond its share a replica
// borrows only once its demand has been visible for a borrow gap, and
// never a slot the others hold.
func TestRemoteCountsTowardsCap(t *testing.T) {
	k := Key{"a", "m"}
	c := []Candidate{cand("a", "m", 4, true, 1)}
	tests := []struct {
		name      string
		remote    fakeRemote
		gap       time.Duration
		wantSlots int // granted before the next Acquire is refused
	}{
		{"remote holds every slot", fakeRemote{held: map[Key]int{k: 4}}, time.Nanosecond, 0},
		{"own share, no borrowing before the gap", fakeRemote{share: 2, held: map[Key]int{k: 1}}, time.Hour, 2},
		// A nanosecond gap has always passed by the next Acquire.
		{"borrows up to what the others leave", fakeRemote{share: 2, held: map[Key]int{k: 1}}, time.Nanosecond, 3},
		{"borrows the whole cap from idle others", fakeRemote{share: 1, held: map[Key]int{}}, time.Nanosecond, 4},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := New(Options{MaxQueue: 0, MaxWait: time.Millisecond, BorrowGap: tt.gap}, tt.remote)
			var held []*Slot
			defer func() {
				for _, s := range held {
					s.Release()
				}
			}()
			for range tt.wantSlots {
				s, err := r.Acquire(context.Background(), Tenant{}, c)
				if err != nil {
					t.Fatalf("slot %d of %d: %v", len(held)+1, tt.wantSlots, err)
				}
				held = append(held, s)
			}
			if _, err := r.Acquire(context.Background(), Tenant{}, c); !errors.Is(err, ErrQueueFull) {
				t.Fatalf("slot %d: got %v, want ErrQueueFull", tt.wantSlots+1, err)
			}
		})
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met in time")
		}
		time.Sleep(time.Millisecond)
	}
}
