package routing

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/droverhq/drover/pkg/apikey"
)

// grant is one slot handed out in a closed-loop run: to whom, how many
// grants to anyone happened while it waited, and who was waiting then.
type grant struct {
	who     Tenant
	turns   int
	waiting map[string]int // waiters per key id just before the grant
}

// closedLoop runs clients against one pool of cap slots, each client
// asking again as soon as its request ends, and the test playing the
// backend: it releases the oldest held slot, waits for the one grant that
// follows and for the released client to queue again, steps times. Every
// grant is therefore decided on a known queue, and the run measures order,
// not speed.
func closedLoop(t *testing.T, cap int, clients []Tenant, steps int) []grant {
	t.Helper()
	r := New(Options{MaxQueue: len(clients), MaxWait: time.Minute}, nil)
	c := []Candidate{cand("a", "m", cap, true, 1)}
	type held struct {
		s     *Slot
		who   Tenant
		turns int           // grants to anyone while it waited
		done  chan struct{} // closed by the test to end the request
	}
	grants := make(chan held)
	var mu sync.Mutex // guards granted, enq
	granted := 0
	enq := map[int]int{} // client -> granted count when it queued
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	defer func() { cancel(); wg.Wait() }()
	for i, who := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				mu.Lock()
				enq[i] = granted
				mu.Unlock()
				s, err := r.Acquire(ctx, who, c)
				if err != nil {
					return
				}
				mu.Lock()
				h := held{s: s, who: who, turns: granted - enq[i], done: make(chan struct{})}
				granted++
				mu.Unlock()
				select {
				case grants <- h:
				case <-ctx.Done():
					s.Release()
					return
				}
				select {
				case <-h.done:
				case <-ctx.Done():
				}
				s.Release()
			}
		}()
	}
	var holding []held
	for range cap {
		holding = append(holding, <-grants)
	}
	waitFor(t, func() bool { return r.QueueLen() == len(clients)-cap })
	var out []grant
	for range steps {
		waiting := map[string]int{}
		for _, who := range clients {
			waiting[who.ID]++
		}
		for _, h := range holding {
			waiting[h.who.ID]--
		}
		oldest := holding[0]
		holding = holding[1:]
		close(oldest.done)
		h := <-grants
		holding = append(holding, h)
		out = append(out, grant{who: h.who, turns: h.turns, waiting: waiting})
		waitFor(t, func() bool { return r.QueueLen() == len(clients)-cap })
	}
	for _, h := range holding {
		close(h.done)
	}
	cancel()
	wg.Wait()
	if r.QueueLen() != 0 || len(r.InFlight()) != 0 {
		t.Fatalf("leaked: queue %d, in flight %v", r.QueueLen(), r.InFlight())
	}
	return out
}

func clientsOf(n int, who Tenant) []Tenant {
	out := make([]Tenant, n)
	for i := range out {
		out[i] = who
	}
	return out
}

// sharesWhileBoth counts grants per key among those made while every key
// in ids had a waiter.
func sharesWhileBoth(gs []grant, ids ...string) map[string]int {
	out := map[string]int{}
	for _, g := range gs {
		both := true
		for _, id := range ids {
			both = both && g.waiting[id] > 0
		}
		if both {
			out[g.who.ID]++
		}
	}
	return out
}

// Jain's fairness index of xs normalised by weights: 1 is perfectly fair.
func jain(xs ...float64) float64 {
	var sum, sq float64
	for _, x := range xs {
		sum += x
		sq += x * x
	}
	return sum * sum / (float64(len(xs)) * sq)
}

func TestWeightsAcrossKeys(t *testing.T) {
	a, b := Tenant{ID: "a", Weight: 3}, Tenant{ID: "b", Weight: 1}
	gs := closedLoop(t, 4, append(clientsOf(20, a), clientsOf(20, b)...), 400)
	s := sharesWhileBoth(gs, "a", "b")
	total := float64(s["a"] + s["b"])
	t.Logf("weights 3:1, cap 4: a %d, b %d grants while both waited (a's share %.3f, want 0.75)", s["a"], s["b"], float64(s["a"])/total)
	if total < 300 {
		t.Fatalf("only %v grants while both waited: the test exercised no contention", total)
	}
	if share := float64(s["a"]) / total; share < 0.75*0.9 || share > 0.75*1.1 {
		t.Fatalf("a's share %.3f, want 0.75 within 10%%", share)
	}
}

// Equal weights, a has ten times b's clients: over the grants made while
// both waited, Jain's index is at least 0.95, and b never waits long.
func TestHeavyKeyDoesNotStarveLightKey(t *testing.T) {
	a, b := Tenant{ID: "a"}, Tenant{ID: "b"}
	gs := closedLoop(t, 4, append(clientsOf(40, a), clientsOf(4, b)...), 400)
	s := sharesWhileBoth(gs, "a", "b")
	idx := jain(float64(s["a"]), float64(s["b"]))
	maxTurns, sumTurns, nb := 0, 0, 0
	for _, g := range gs {
		if g.who.ID == "b" {
			maxTurns = max(maxTurns, g.turns)
			sumTurns += g.turns
			nb++
		}
	}
	t.Logf("equal weights, a 10x b's clients, cap 4: a %d, b %d grants while both waited, Jain %.4f; b waited %.1f grants on average, at most %d (one FIFO queue: 40)",
		s["a"], s["b"], idx, float64(sumTurns)/float64(nb), maxTurns)
	if idx < 0.95 {
		t.Fatalf("Jain's index %.4f < 0.95", idx)
	}
	// b holds half the slots: each of its 4 clients is served again
	// within a few grants, never behind a's 40.
	if maxTurns > 8 {
		t.Fatalf("b waited up to %d grants", maxTurns)
	}
}

// A batch flood beside interactive clients: whenever an interactive
// request waits, the next slot is interactive.
func TestInteractiveBeforeBatch(t *testing.T) {
	chat := Tenant{ID: "chat", Class: apikey.ClassInteractive}
	flood := Tenant{ID: "flood", Class: apikey.ClassBatch, Weight: 100}
	gs := closedLoop(t, 4, append(clientsOf(30, flood), clientsOf(3, chat)...), 300)
	batchWhileChat, chatGrants := 0, 0
	for _, g := range gs {
		if g.who.ID == "chat" {
			chatGrants++
		} else if g.waiting["chat"] > 0 {
			batchWhileChat++
		}
	}
	t.Logf("3 interactive clients beside 30 batch: %d interactive grants of %d; batch granted %d times while interactive waited", chatGrants, len(gs), batchWhileChat)
	if batchWhileChat != 0 || chatGrants == 0 {
		t.Fatalf("batch granted %d times while interactive waited (interactive got %d)", batchWhileChat, chatGrants)
	}
}

// Within one key requests are served in arrival order, whatever other keys
// do meanwhile.
func TestFIFOWithinKey(t *testing.T) {
	r := New(Options{MaxQueue: 100, MaxWait: 5 * time.Second}, nil)
	c := []Candidate{cand("a", "m", 1, true, 1)}
	held, _ := r.Acquire(context.Background(), Tenant{ID: "x"}, c)
	type served struct {
		key string
		n   int
	}
	order := make(chan served, 20)
	var wg sync.WaitGroup
	for i := range 20 {
		key := []string{"a", "b"}[i%2]
		wg.Add(1)
		go func() {
			defer wg.Done()
			s, err := r.Acquire(context.Background(), Tenant{ID: key}, c)
			if err != nil {
				t.Error(err)
				return
			}
			order <- served{key, i}
			s.Release()
		}()
		waitFor(t, func() bool { return r.QueueLen() == i+1 })
	}
	held.Release()
	wg.Wait()
	close(order)
	last := map[string]int{"a": -1, "b": -1}
	var keys []string
	for s := range order {
		if s.n <= last[s.key] {
			t.Fatalf("key %s: request %d served after %d", s.key, s.n, last[s.key])
		}
		last[s.key] = s.n
		keys = append(keys, s.key)
	}
	t.Logf("served keys in order %v", keys)
}

func TestPerKeyBound(t *testing.T) {
	r := New(Options{MaxQueue: 100, MaxPerKey: 2, MaxWait: 5 * time.Second}, nil)
	c := []Candidate{cand("a", "m", 1, true, 1)}
	held, _ := r.Acquire(context.Background(), Tenant{ID: "a"}, c)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for i, key := range []string{"a", "a", "b"} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := r.Acquire(ctx, Tenant{ID: key}, c); !errors.Is(err, context.Canceled) {
				t.Errorf("waiter %d: %v", i, err)
			}
		}()
		waitFor(t, func() bool { return r.QueueLen() == i+1 })
	}
	_, err := r.Acquire(ctx, Tenant{ID: "a"}, c)
	if !errors.Is(err, ErrKeyQueueFull) || !errors.Is(err, ErrQueueFull) {
		t.Fatalf("a's third waiter: %v, want ErrKeyQueueFull (an ErrQueueFull)", err)
	}
	if err.Error() == ErrQueueFull.Error() {
		t.Fatal("the per-key refusal does not say it is the key's bound")
	}
	// Another key still queues.
	done := make(chan error, 1)
	go func() { _, err := r.Acquire(ctx, Tenant{ID: "c"}, c); done <- err }()
	waitFor(t, func() bool { return r.QueueLen() == 4 })
	cancel()
	wg.Wait()
	<-done
	held.Release()
	if r.QueueLen() != 0 || len(r.InFlight()) != 0 {
		t.Fatalf("leaked: queue %d, in flight %v", r.QueueLen(), r.InFlight())
	}
}

func TestTenantFor(t *testing.T) {
	tests := []struct {
		class, header, want string
		err                 bool
	}{
		{"", "", apikey.ClassInteractive, false},
		{apikey.ClassInteractive, "", apikey.ClassInteractive, false},
		{apikey.ClassInteractive, "batch", apikey.ClassBatch, false},
		{apikey.ClassInteractive, " Batch ", apikey.ClassBatch, false},
		{apikey.ClassBatch, "interactive", apikey.ClassBatch, false}, // never raised
		{apikey.ClassBatch, "batch", apikey.ClassBatch, false},
		{apikey.ClassInteractive, "urgent", "", true},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("%s+%s", tt.class, tt.header), func(t *testing.T) {
			got, err := TenantFor("k", 0, tt.class, tt.header)
			if (err != nil) != tt.err {
				t.Fatalf("err %v, want error %v", err, tt.err)
			}
			if err == nil && (got.Class != tt.want || got.Weight != 1 || got.ID != "k") {
				t.Fatalf("got %+v, want class %s weight 1", got, tt.want)
			}
		})
	}
}

// peersRemote is other replicas with queues, as fleet sync reports them.
type peersRemote struct{ peers map[Key][]PeerLoad }

func (p peersRemote) InFlight(k Key) int {
	n := 0
	for _, l := range p.peers[k] {
		n += l.InFlight
	}
	return n
}
func (p peersRemote) BackendInFlight(string) int { return 0 }
func (p peersRemote) Peers(k Key) []PeerLoad     { return p.peers[k] }
func (p peersRemote) Rank() int                  { return 0 }
func (p peersRemote) Share(_ Key, cap int) int   { return cap }
func (p peersRemote) ShareOf(_ Key, rank, cap int) int {
	if rank == 0 {
		return cap // this replica: no borrowing in these cases
	}
	return cap / 2
}

// The fleet plan: another replica's interactive waiters keep this
// replica's batch waiters off the pool, another replica's key of equal
// weight gets half the free slots, and a busy peer keeps its even share.
// (Weights across replicas are measured in server/fairness_test.go.)
func TestFleetPlan(t *testing.T) {
	k := Key{"a", "m"}
	c := []Candidate{cand("a", "m", 4, true, 1)}
	tests := []struct {
		name string
		peer PeerLoad
		who  Tenant
		want int // slots this replica takes before it must wait
	}{
		{"interactive waiting elsewhere holds batch back", PeerLoad{Rank: 1, Demand: 3, Tenants: []TenantLoad{{ID: "chat", Class: apikey.ClassInteractive, Weight: 1, Waiting: 3}}},
			Tenant{ID: "bulk", Class: apikey.ClassBatch}, 0},
		{"interactive here goes beside interactive elsewhere", PeerLoad{Rank: 1, Demand: 10, Tenants: []TenantLoad{{ID: "chat", Class: apikey.ClassInteractive, Weight: 1, Waiting: 10}}},
			Tenant{ID: "me"}, 2},
		{"batch elsewhere does not hold interactive back", PeerLoad{Rank: 1, Demand: 10, Tenants: []TenantLoad{{ID: "bulk", Class: apikey.ClassBatch, Weight: 1, Waiting: 10}}},
			Tenant{ID: "me"}, 4},
		// The stale-view guard: a peer busy beyond its even share keeps it
		// against queues that go after its own; a heavier key goes first,
		// to its weight's share (the peer's plan agrees: its key waits).
		{"a busy peer keeps its even share", PeerLoad{Rank: 1, Demand: 10, Tenants: []TenantLoad{{ID: "b", Class: apikey.ClassInteractive, Weight: 1, Waiting: 10}}},
			Tenant{ID: "a", Weight: 1}, 2},
		{"a heavier key takes its weight's share", PeerLoad{Rank: 1, Demand: 10, Tenants: []TenantLoad{{ID: "b", Class: apikey.ClassInteractive, Weight: 1, Waiting: 10}}},
			Tenant{ID: "a", Weight: 3}, 3},
		{"an unnamed queue (a list cut to the limits) counts as interactive", PeerLoad{Rank: 1, InFlight: 1, Demand: 10},
			Tenant{ID: "bulk", Class: apikey.ClassBatch}, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := New(Options{MaxQueue: 0, MaxWait: time.Millisecond}, peersRemote{peers: map[Key][]PeerLoad{k: {tt.peer}}})
			var held []*Slot
			defer func() {
				for _, s := range held {
					s.Release()
				}
			}()
			for range tt.want {
				s, err := r.Acquire(context.Background(), tt.who, c)
				if err != nil {
					t.Fatalf("slot %d of %d: %v", len(held)+1, tt.want, err)
				}
				held = append(held, s)
			}
			if _, err := r.Acquire(context.Background(), tt.who, c); !errors.Is(err, ErrQueueFull) {
				t.Fatalf("slot %d: got %v, want ErrQueueFull", tt.want+1, err)
			}
		})
	}
}

// BenchmarkAcquireRelease is the routing cost of a request that finds a
// free slot: the plan runs on every acquisition.
func BenchmarkAcquireRelease(b *testing.B) {
	r := New(Options{MaxQueue: 10, MaxWait: time.Second}, nil)
	c := []Candidate{cand("a", "m", 4, true, 1), cand("b", "m", 4, true, 1)}
	who := Tenant{ID: "k"}
	for b.Loop() {
		s, err := r.Acquire(context.Background(), who, c)
		if err != nil {
			b.Fatal(err)
		}
		s.Release()
	}
}

// BenchmarkReleaseToWaiter is the cost of handing a released slot to the
// next waiter with 64 waiters of 8 keys in two classes queued.
func BenchmarkReleaseToWaiter(b *testing.B) {
	r := New(Options{MaxQueue: 1000, MaxWait: time.Hour}, nil)
	c := []Candidate{cand("a", "m", 4, true, 1)}
	ctx, cancel := context.WithCancel(context.Background())
	slots := make(chan *Slot, 100)
	var wg sync.WaitGroup
	for i := range 68 {
		who := Tenant{ID: fmt.Sprint("k", i%8), Weight: 1 + i%3, Class: apikey.Classes[i%2]}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				s, err := r.Acquire(ctx, who, c)
				if err != nil {
					return
				}
				slots <- s
			}
		}()
	}
	for b.Loop() {
		(<-slots).Release()
	}
	cancel()
	go func() { wg.Wait(); close(slots) }()
	for s := range slots {
		s.Release()
	}
}

// thirdOfThree is a replica ranked last of three: with a cap smaller than
// three, its even share is zero.
type thirdOfThree struct{ peersRemote }

func (thirdOfThree) Rank() int { return 2 }
func (thirdOfThree) ShareOf(_ Key, rank, cap int) int {
	n := cap / 3
	if rank < cap%3 {
		n++
	}
	return n
}
func (t thirdOfThree) Share(k Key, cap int) int { return t.ShareOf(k, 2, cap) }

// firstOfThree is the first replica of three, with the shares of
// thirdOfThree (cap 2: one slot each for ranks 0 and 1).
type firstOfThree struct{ peersRemote }

func (firstOfThree) Rank() int { return 0 }
func (firstOfThree) ShareOf(k Key, rank, cap int) int {
	return thirdOfThree{}.ShareOf(k, rank, cap)
}
func (t firstOfThree) Share(k Key, cap int) int { return t.ShareOf(k, 0, cap) }

// A replica whose share of a cap is zero (cap 2, three replicas) gets the
// slot the plan gives its key even while the others are busy: reserving
// the busy peers' shares for them blocked it until max_wait (the stall
// make bench-tenancy found with 2 backends × cap 2 on three replicas).
// Here key b holds a slot on one peer and waits on the other; key a, with
// nothing held, waits only on this replica: the free slot is a's.
func TestZeroShareReplicaIsNotStarved(t *testing.T) {
	k := Key{"a", "m"}
	c := []Candidate{cand("a", "m", 2, true, 1)}
	busy := []PeerLoad{
		{Rank: 0, InFlight: 1, Demand: 1, Tenants: []TenantLoad{{ID: "b", Class: apikey.ClassInteractive, Weight: 1, InFlight: 1}}},
		{Rank: 1, Demand: 3, Tenants: []TenantLoad{{ID: "b", Class: apikey.ClassInteractive, Weight: 1, Waiting: 3}}},
	}
	r := New(Options{MaxQueue: 10, MaxWait: time.Second}, thirdOfThree{peersRemote{peers: map[Key][]PeerLoad{k: busy}}})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	s, err := r.Acquire(ctx, Tenant{ID: "a", Weight: 1}, c)
	if err != nil {
		t.Fatalf("key a never got its turn on the replica without a share: %v", err)
	}
	s.Release()
}

// One key's requests are served first come, first served across replicas:
// a free slot goes to the replica where the key's oldest waiter arrived
// first (docs/limits.md, the queue). A replica without a share of a small
// cap (cap 2 over three replicas) still gets its turn by arrival.
func TestFleetFIFOWithinKey(t *testing.T) {
	k := Key{"a", "m"}
	c := []Candidate{cand("a", "m", 2, true, 1)}
	for _, tt := range []struct {
		name   string
		remote func([]PeerLoad) Remote
		peerAt time.Duration // the peer's oldest waiter, relative to ours
		want   bool          // this replica takes the free slot
	}{
		{"the peer's waiter is older", func(p []PeerLoad) Remote { return firstOfThree{peersRemote{peers: map[Key][]PeerLoad{k: p}}} }, -time.Second, false},
		{"this replica's waiter is older", func(p []PeerLoad) Remote { return firstOfThree{peersRemote{peers: map[Key][]PeerLoad{k: p}}} }, time.Second, true},
		{"this replica has no share and the older waiter", func(p []PeerLoad) Remote { return thirdOfThree{peersRemote{peers: map[Key][]PeerLoad{k: p}}} }, time.Second, true},
		{"this replica has no share, the peer the older waiter", func(p []PeerLoad) Remote { return thirdOfThree{peersRemote{peers: map[Key][]PeerLoad{k: p}}} }, -time.Second, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			now := time.Now()
			// One slot of two held elsewhere; key b waits here and on rank 1.
			peers := []PeerLoad{
				{Rank: 0, InFlight: 1, Demand: 1, Tenants: []TenantLoad{{ID: "b", Class: apikey.ClassInteractive, Weight: 1, InFlight: 1}}},
				{Rank: 1, Demand: 1, Tenants: []TenantLoad{{ID: "b", Class: apikey.ClassInteractive, Weight: 1, Waiting: 1, Oldest: now.Add(tt.peerAt).UnixMilli()}}},
			}
			if _, ok := tt.remote(nil).(firstOfThree); ok {
				peers[0].Rank = 2 // this replica is rank 0
			}
			r := New(Options{MaxQueue: 10, MaxWait: time.Minute}, tt.remote(peers))
			ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
			defer cancel()
			got := make(chan error, 1)
			go func() {
				s, err := r.Acquire(ctx, Tenant{ID: "b", Weight: 1}, c)
				if err == nil {
					s.Release()
				}
				got <- err
			}()
			for r.QueueLen() == 0 {
				select {
				case err := <-got:
					t.Fatalf("granted before it queued (%v): the peer's waiter is never considered", err)
				case <-time.After(time.Millisecond):
				}
			}
			r.Loads() // the others hear of this replica's waiter; grants run
			err := <-got
			if tt.want && err != nil {
				t.Fatalf("the older waiter here never got the slot: %v", err)
			}
			if !tt.want && err == nil {
				t.Fatal("a younger waiter here took the slot the peer's older waiter is due")
			}
			if r.QueueLen() != 0 {
				t.Fatalf("%d still queued", r.QueueLen())
			}
		})
	}
}

// Batch leaves the headroom free while interactive requests are about
// (placed on the pools in one order, batch keeping one slot of the model),
// and takes every slot otherwise; the slot kept is an interactive
// request's at once. With the peak on, batch also leaves what interactive
// requests held at once recently.
func TestInteractiveHeadroom(t *testing.T) {
	batch := Tenant{ID: "bulk", Class: apikey.ClassBatch}
	chat := Tenant{ID: "chat", Class: apikey.ClassInteractive}
	two := []Candidate{cand("b", "m", 2, true, 1), cand("a", "m", 2, true, 1)}
	for _, tt := range []struct {
		name     string
		cands    []Candidate
		headroom int
		peak     bool
		batchMin int
		chats    int // interactive slots held at once (then released) before batch asks
		held     int // of which still held while batch asks
		want     int // batch slots before it must wait
		kept     string
	}{
		{"no interactive request: every slot", []Candidate{cand("a", "m", 4, true, 1)}, 1, false, 0, 0, 0, 4, ""},
		{"interactive about: one slot kept", []Candidate{cand("a", "m", 4, true, 1)}, 1, false, 0, 1, 0, 3, "a"},
		{"two slots: one kept", []Candidate{cand("a", "m", 2, true, 1)}, 1, false, 0, 1, 0, 1, "a"},
		{"one slot: batch keeps it, none kept", []Candidate{cand("a", "m", 1, true, 1)}, 1, false, 0, 1, 0, 1, ""},
		{"eight slots: still one", []Candidate{cand("a", "m", 8, true, 1)}, 1, false, 0, 1, 0, 7, "a"},
		{"two backends of two: one kept on the first", two, 1, false, 0, 1, 0, 3, "a"},
		{"three kept over two backends, batch keeps one", two, 3, false, 0, 1, 0, 1, "a"},
		{"more than the slots: batch keeps one", two, 9, false, 0, 1, 0, 1, "a"},
		{"peak of three: three kept", []Candidate{cand("a", "m", 4, true, 1)}, 1, true, 0, 3, 0, 1, "a"},
		{"peak of three, two held: one more kept", []Candidate{cand("a", "m", 4, true, 1)}, 1, true, 0, 3, 2, 1, ""},
		{"peak of one: the headroom", []Candidate{cand("a", "m", 4, true, 1)}, 1, true, 0, 1, 0, 3, "a"},
		{"peak of four on two backends: all kept", two, 0, true, 0, 4, 0, 0, ""},
		{"peak of four, batch_min_slots 1: batch keeps one", two, 0, true, 1, 4, 0, 1, "a"},
		{"one slot: the peak keeps it", []Candidate{cand("a", "m", 1, true, 1)}, 1, true, 0, 1, 0, 0, "a"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			r := New(Options{MaxWait: time.Millisecond, InteractiveHeadroom: tt.headroom, InteractivePeak: tt.peak, BatchMinSlots: tt.batchMin}, nil)
			var chats, held []*Slot
			defer func() {
				for _, s := range append(chats, held...) {
					s.Release()
				}
			}()
			for range tt.chats {
				s, err := r.Acquire(context.Background(), chat, tt.cands)
				if err != nil {
					t.Fatal(err)
				}
				chats = append(chats, s)
			}
			// A batch waiter while the chats are held, so the peak is seen.
			ctx, cancel := context.WithTimeout(context.Background(), time.Millisecond)
			if s, err := r.Acquire(ctx, batch, tt.cands); err == nil {
				held = append(held, s)
			}
			cancel()
			for len(chats) > tt.held {
				chats[len(chats)-1].Release()
				chats = chats[:len(chats)-1]
			}
			for len(held) < tt.want {
				s, err := r.Acquire(context.Background(), batch, tt.cands)
				if err != nil {
					t.Fatalf("batch slot %d of %d: %v", len(held)+1, tt.want, err)
				}
				held = append(held, s)
			}
			if _, err := r.Acquire(context.Background(), batch, tt.cands); err == nil {
				t.Fatalf("batch slot %d granted", tt.want+1)
			}
			if tt.kept != "" {
				s, err := r.Acquire(context.Background(), chat, tt.cands)
				if err != nil {
					t.Fatalf("interactive beside batch: %v", err)
				}
				if s.Backend != tt.kept {
					t.Errorf("interactive got %s, want the kept pool %s", s.Backend, tt.kept)
				}
				s.Release()
			}
		})
	}
}

// TestPeakMemory: the interactive peak is remembered for at least half of
// PeakWindow (10 s) after it was seen and forgotten once a whole window
// has passed with nothing as large.
func TestPeakMemory(t *testing.T) {
	t0 := time.Unix(1_000_000, 0)
	var p peak
	p.observe(0, t0)
	if got := p.observe(4, t0.Add(time.Second)); got != 4 {
		t.Fatalf("peak %d right after a burst of 4", got)
	}
	// Half a window on, the burst is in the previous half: still kept.
	if got := p.observe(1, t0.Add(PeakWindow/2+2*time.Second)); got != 4 {
		t.Errorf("peak %d at %v after the burst, want 4", got, PeakWindow/2+time.Second)
	}
	if got := p.observe(1, t0.Add(PeakWindow-time.Second)); got != 4 {
		t.Errorf("peak %d just under a window after the burst, want 4", got)
	}
	// Two halves on with nothing larger: forgotten.
	if got := p.observe(1, t0.Add(PeakWindow+PeakWindow/2+time.Second)); got != 1 {
		t.Errorf("peak %d %v after the burst, want 1", got, PeakWindow+PeakWindow/2)
	}
	if PeakWindow/2 < InteractiveWindow {
		t.Errorf("PeakWindow %v remembers less than InteractiveWindow %v at its shortest", PeakWindow, InteractiveWindow)
	}
}
