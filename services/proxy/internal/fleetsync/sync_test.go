package fleetsync

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"go.uber.org/goleak"

	"github.com/droverhq/drover/pkg/config"
	"github.com/droverhq/drover/services/proxy/internal/routing"
	"github.com/droverhq/drover/testkit/natstest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var (
	keyA = routing.Key{Backend: "a", Model: "m"}
	keyB = routing.Key{Backend: "b", Model: "m"}
)

// fakeLocal is a replica's router as the sync sees it: loads the test
// sets, and a count of Rechecks.
type fakeLocal struct {
	mu       sync.Mutex // guards loads
	loads    map[routing.Key]routing.Load
	rechecks atomic.Int64
}

func (f *fakeLocal) Loads() map[routing.Key]routing.Load {
	f.mu.Lock()
	defer f.mu.Unlock()
	return maps.Clone(f.loads)
}

func (f *fakeLocal) Recheck() { f.rechecks.Add(1) }

func (f *fakeLocal) set(loads map[routing.Key]routing.Load) {
	f.mu.Lock()
	f.loads = loads
	f.mu.Unlock()
}

// invalidations records what an Invalidator was asked to drop.
type invalidations struct {
	mu    sync.Mutex // guards calls
	calls [][]string
}

func (i *invalidations) invalidate(backends ...string) {
	i.mu.Lock()
	i.calls = append(i.calls, append([]string{}, backends...))
	i.mu.Unlock()
}

func (i *invalidations) get() [][]string {
	i.mu.Lock()
	defer i.mu.Unlock()
	return append([][]string(nil), i.calls...)
}

type replica struct {
	sync  *Sync
	local *fakeLocal
	inv   *invalidations
	nc    *nats.Conn
}

// startReplica connects a sync of its own to srv and starts it; it is
// closed when the test ends.
func startReplica(t *testing.T, srv *natstest.Server, opts Options, loads map[routing.Key]routing.Load) *replica {
	t.Helper()
	nc, err := nats.Connect(srv.URL())
	if err != nil {
		t.Fatal(err)
	}
	r := &replica{local: &fakeLocal{loads: loads}, inv: &invalidations{}, nc: nc}
	r.sync = New(nc, opts, slog.New(slog.DiscardHandler))
	r.sync.Attach(r.local, r.inv.invalidate)
	if err := r.sync.Start(); err != nil {
		t.Fatal(err)
	}
	// Subscriptions must be in place before the test publishes.
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.sync.Close(); nc.Close() })
	return r
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func peers(s *Sync) []string {
	p := s.Status().Peers
	slices.Sort(p)
	return p
}

// Counts published by the other replicas are summed per key and per
// backend, and a change reaches the others at once (not at the next
// heartbeat, an hour away here).
func TestCountsFromOtherReplicasAreMerged(t *testing.T) {
	srv := natstest.Start(t)
	hour := Options{Heartbeat: time.Hour}
	r1 := startReplica(t, srv, withName(hour, "r1"), nil)
	queues := []routing.TenantLoad{{ID: "chat", Class: "interactive", Weight: 3, InFlight: 2, Waiting: 1, Recent: 1.5}, {ID: "bulk", Class: "batch", Weight: 1, Waiting: 2}}
	r2 := startReplica(t, srv, withName(hour, "r2"), map[routing.Key]routing.Load{keyA: {InFlight: 2, Demand: 5, Tenants: queues}})
	startReplica(t, srv, withName(hour, "r3"), map[routing.Key]routing.Load{keyA: {InFlight: 1, Demand: 1}, keyB: {InFlight: 4, Demand: 4}})

	waitFor(t, "both peers' counts", func() bool { return r1.sync.InFlight(keyA) == 3 && r1.sync.InFlight(keyB) == 4 })
	if got := r1.sync.BackendInFlight("b"); got != 4 {
		t.Fatalf("backend b: %d in flight elsewhere, want 4", got)
	}
	if got := r1.sync.Remote(); got["a"]["m"] != 3 || got["b"]["m"] != 4 {
		t.Fatalf("Remote() = %v", got)
	}
	if got := peers(r1.sync); !slices.Equal(got, []string{"r2", "r3"}) || r1.sync.Status().Mode != "fleet" {
		t.Fatalf("status %+v, want fleet with r2 and r3", r1.sync.Status())
	}
	// Three replicas share a cap of 10 as 4, 3, 3 (the 4 at a rank that
	// depends on the backend and model, TestShareRotates).
	if got := r1.sync.Share(keyA, 10); got != share(keyA, 10, 3, 0) || got < 3 || got > 4 {
		t.Fatalf("r1's share of 10: %d, want 3 or 4 (%d)", got, share(keyA, 10, 3, 0))
	}
	var ranks []int
	for _, p := range r1.sync.Peers(keyA) {
		ranks = append(ranks, p.Rank)
	}
	slices.Sort(ranks)
	if r1.sync.Rank() != 0 || !slices.Equal(ranks, []int{1, 2}) {
		t.Fatalf("ranks: r1 %d, peers %v; want 0 and [1 2]", r1.sync.Rank(), ranks)
	}
	// r2's queues arrive as it sent them, for the fleet plan.
	for _, p := range r1.sync.Peers(keyA) {
		if p.Rank == 1 && (p.InFlight != 2 || p.Demand != 5 || !slices.Equal(p.Tenants, queues)) {
			t.Fatalf("r2's load on a: %+v, want its queues %+v", p, queues)
		}
	}
	if sum := r1.sync.ShareOf(keyA, 0, 10) + r1.sync.ShareOf(keyA, 1, 10) + r1.sync.ShareOf(keyA, 2, 10); sum != 10 {
		t.Fatalf("shares of 10 over three ranks sum to %d", sum)
	}
	if own := r1.sync.Share(keyA, 10); own != r1.sync.ShareOf(keyA, 0, 10) {
		t.Fatalf("Share %d, ShareOf rank 0 %d: they must agree", own, r1.sync.ShareOf(keyA, 0, 10))
	}
	if r1.local.rechecks.Load() == 0 {
		t.Fatal("counts arrived but local waiters were never rechecked")
	}

	r2.local.set(map[routing.Key]routing.Load{keyA: {InFlight: 7, Demand: 7}})
	r2.sync.Changed()
	waitFor(t, "r2's change", func() bool { return r1.sync.InFlight(keyA) == 8 })
}

func withName(o Options, name string) Options {
	o.Replica = name
	return o
}

// A replica that stops sending (it crashed: no goodbye) is forgotten once
// its TTL has passed, while one that keeps heartbeating stays.
func TestSilentReplicaAgesOut(t *testing.T) {
	srv := natstest.Start(t)
	r1 := startReplica(t, srv, Options{Replica: "r1", Heartbeat: time.Hour, TTL: 150 * time.Millisecond}, nil)
	startReplica(t, srv, Options{Replica: "r2", Heartbeat: 50 * time.Millisecond, TTL: 5 * time.Second},
		map[routing.Key]routing.Load{keyB: {InFlight: 1, Demand: 1}})

	// The ghost speaks once, the way a replica does, and never again.
	ghost, err := nats.Connect(srv.URL())
	if err != nil {
		t.Fatal(err)
	}
	defer ghost.Close()
	msg, _ := json.Marshal(countMsg{Replica: "ghost", Seq: 1, TTLms: 200, Counts: []count{{Backend: "a", Model: "m", N: 3, D: 3}}})
	if err := ghost.Publish(config.SubjectInFlight, msg); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the ghost's counts", func() bool { return r1.sync.InFlight(keyA) == 3 && r1.sync.InFlight(keyB) == 1 })
	if got := r1.sync.Share(keyA, 9); got != 3 {
		t.Fatalf("share of 9 among three replicas: %d", got)
	}
	rechecks := r1.local.rechecks.Load()

	waitFor(t, "the ghost to age out", func() bool { return r1.sync.InFlight(keyA) == 0 })
	if got := peers(r1.sync); !slices.Equal(got, []string{"r2"}) || r1.sync.InFlight(keyB) != 1 {
		t.Fatalf("after the ghost aged out: peers %v, b in flight %d; want r2 still there with 1", got, r1.sync.InFlight(keyB))
	}
	if got := r1.sync.Share(keyA, 9); got != share(keyA, 9, 2, 0) || got < 4 {
		t.Fatalf("share of 9 between two replicas: %d, want 4 or 5 (%d)", got, share(keyA, 9, 2, 0))
	}
	if r1.local.rechecks.Load() == rechecks {
		t.Fatal("slots freed by the ghost were never offered to local waiters")
	}
}

// A replica that closes says goodbye: its counts drop at once, long before
// its TTL.
func TestGoodbyeDropsCounts(t *testing.T) {
	srv := natstest.Start(t)
	r1 := startReplica(t, srv, Options{Replica: "r1", Heartbeat: time.Hour}, nil)
	r2 := startReplica(t, srv, Options{Replica: "r2", Heartbeat: time.Hour}, map[routing.Key]routing.Load{keyA: {InFlight: 2, Demand: 2}})
	waitFor(t, "r2's counts", func() bool { return r1.sync.InFlight(keyA) == 2 })
	r2.sync.Close()
	waitFor(t, "r2's goodbye", func() bool { return r1.sync.InFlight(keyA) == 0 })
}

// An invalidation reaches every other replica, for the backends named or
// for all; the sender's own message does not come back to it.
func TestInvalidationsCrossReplicas(t *testing.T) {
	srv := natstest.Start(t)
	r1 := startReplica(t, srv, Options{Replica: "r1", Heartbeat: time.Hour}, nil)
	r2 := startReplica(t, srv, Options{Replica: "r2", Heartbeat: time.Hour}, nil)
	r3 := startReplica(t, srv, Options{Replica: "r3", Heartbeat: time.Hour}, nil)

	r1.sync.PublishInvalidate([]string{"a", "b"})
	r1.sync.PublishInvalidate(nil)
	want := [][]string{{"a", "b"}, {}}
	for _, r := range []*replica{r2, r3} {
		waitFor(t, "both invalidations", func() bool { return len(r.inv.get()) == 2 })
		if got := r.inv.get(); !slices.EqualFunc(got, want, slices.Equal) {
			t.Fatalf("invalidations %q, want %q", got, want)
		}
	}
	// r1 hears its own messages too; they reached it before r2's, which
	// r2 sent after it had seen them.
	r2.sync.PublishInvalidate([]string{"c"})
	waitFor(t, "r2's invalidation at r1", func() bool { return len(r1.inv.get()) == 1 })
	if got := r1.inv.get(); !slices.EqualFunc(got, [][]string{{"c"}}, slices.Equal) {
		t.Fatalf("r1 invalidated %q: its own messages came back", got)
	}
}

// Close stops every goroutine the sync started.
func TestCloseStopsGoroutines(t *testing.T) {
	srv := natstest.Start(t)
	nc, err := nats.Connect(srv.URL())
	if err != nil {
		t.Fatal(err)
	}
	// What runs before the sync starts (NATS client and server) is not
	// the sync's.
	ignore := goleak.IgnoreCurrent()
	s := New(nc, Options{Replica: "r1", Heartbeat: 10 * time.Millisecond}, slog.New(slog.DiscardHandler))
	s.Attach(&fakeLocal{}, func(...string) {})
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "a few heartbeats", func() bool { return s.Published.Load() >= 3 })
	s.Close()
	goleak.VerifyNone(t, ignore)
	nc.Close()
}

// Without NATS a replica routes on its own counts, has the whole of every
// cap and says why.
func TestWithoutNATSRoutesAlone(t *testing.T) {
	s := New(nil, Options{Replica: "r1"}, slog.New(slog.DiscardHandler))
	s.Attach(&fakeLocal{}, func(...string) {})
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	s.Changed()
	s.PublishInvalidate(nil)
	if st := s.Status(); st.Mode != "local" || st.Reason == "" {
		t.Fatalf("status %+v, want local with a reason", st)
	}
	if s.Share(keyA, 7) != 7 || len(s.Peers(keyA)) != 0 || s.InFlight(keyA) != 0 {
		t.Fatal("a replica alone must have the whole cap")
	}
}

// TestShareRotates: shares of every cap sum to it and differ by at most one,
// and where a cap does not divide evenly (cap 2 over three replicas) the
// remainder starts at a different rank for different backends, so that no
// replica is left without a share of every backend.
func TestShareRotates(t *testing.T) {
	for replicas := 1; replicas <= 5; replicas++ {
		got := make([]int, replicas)
		for b := range 64 {
			k := routing.Key{Backend: fmt.Sprintf("gpu%d", b), Model: "llama3:latest"}
			for cap := 0; cap <= 9; cap++ {
				sum, lo, hi := 0, cap, 0
				for rank := range replicas {
					n := share(k, cap, replicas, rank)
					sum, lo, hi = sum+n, min(lo, n), max(hi, n)
					if cap == 2 {
						got[rank] += n
					}
				}
				if sum != cap || hi-lo > 1 {
					t.Fatalf("%d replicas, cap %d on %v: shares sum to %d, spread %d", replicas, cap, k, sum, hi-lo)
				}
			}
		}
		for rank, n := range got {
			if n == 0 {
				t.Errorf("%d replicas: rank %d has no share of cap 2 on any of 64 backends", replicas, rank)
			}
		}
	}
}
