package fleetsync

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/droverhq/drover/pkg/config"
	"github.com/droverhq/drover/pkg/natsconn"
	"github.com/droverhq/drover/services/proxy/internal/fleet"
	"github.com/droverhq/drover/services/proxy/internal/routing"
	"github.com/droverhq/drover/testkit/natstest"
	"github.com/droverhq/drover/testkit/ollamatest"
)

// These tests replay the attacks of issue 13 with the proxies' own NATS
// credentials (what a compromised or buggy replica has) against a server
// loaded from the shipped deploy/nats/nats.conf.

func proxyConn(t *testing.T, srv *natstest.Server, name string) *nats.Conn {
	t.Helper()
	nc, err := natsconn.Connect(config.NATS{URL: srv.URL(), User: "proxy", Password: natstest.ProxyPassword},
		"drover-proxy "+name, slog.New(slog.DiscardHandler), nats.NoEcho())
	if err != nil {
		t.Fatal(err)
	}
	return nc
}

// routedReplica is a sync with a real router on it, as in a proxy.
type routedReplica struct {
	sync   *Sync
	router *routing.Router
}

func startRouted(t *testing.T, srv *natstest.Server, opts Options, inv Invalidator) *routedReplica {
	t.Helper()
	nc := proxyConn(t, srv, opts.Replica+" sync")
	s := New(nc, opts, slog.New(slog.DiscardHandler))
	r := routing.New(routing.Options{MaxQueue: 16, MaxWait: 300 * time.Millisecond, Changed: s.Changed}, s)
	if inv == nil {
		inv = func(...string) {}
	}
	s.Attach(r, inv)
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close(); nc.Close() })
	return &routedReplica{sync: s, router: r}
}

// Attack (b): a "ghost" replica, sent with valid proxy credentials, claims
// 1,000 in flight on every backend. A replica without limits (the control)
// believes it and its requests wait until they give up; a replica with the
// limits a proxy runs with (LimitsFor) rejects the message, counts and
// logs it, and grants every slot of the cap.
func TestGhostReplicaIsRejected(t *testing.T) {
	srv := natstest.StartShipped(t)
	hour := time.Hour
	control := startRouted(t, srv, Options{Replica: "r0", Heartbeat: hour}, nil)
	reg := prometheus.NewRegistry()
	guarded := startRouted(t, srv, Options{Replica: "r1", Heartbeat: hour, Registerer: reg,
		Limits: Limits{Backends: []string{"a", "b"}, MaxInFlight: 4, MaxQueue: 16}}, nil)

	ghost := proxyConn(t, srv, "ghost")
	defer ghost.Close()
	msg, _ := json.Marshal(countMsg{Replica: "ghost", Seq: 1, TTLms: 3000, Counts: []count{
		{Backend: "a", Model: "m", N: 1000, D: 1000}, {Backend: "b", Model: "m", N: 1000, D: 1000}}})
	if err := ghost.Publish(config.SubjectInFlight, msg); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the ghost's message at both replicas", func() bool {
		return control.sync.InFlight(keyA) == 1000 && guarded.sync.Rejected.Load() == 1
	})

	cands := []routing.Candidate{{Key: keyA, Cap: 4}, {Key: keyB, Cap: 4}}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := control.router.Acquire(ctx, routing.Tenant{}, cands); !errors.Is(err, routing.ErrQueueTimeout) {
		t.Fatalf("control replica: %v, want %v: the ghost had no effect, the test proves nothing", err, routing.ErrQueueTimeout)
	}
	var slots []*routing.Slot
	for range 8 { // the whole cap of both backends
		s, err := guarded.router.Acquire(ctx, routing.Tenant{}, cands)
		if err != nil {
			t.Fatalf("slot %d: %v", len(slots)+1, err)
		}
		slots = append(slots, s)
	}
	for _, s := range slots {
		s.Release()
	}
	if got := guarded.sync.InFlight(keyA); got != 0 || slices.Contains(guarded.sync.Status().Peers, "ghost") {
		t.Fatalf("the guarded replica counts %d in flight elsewhere and peers %v", got, guarded.sync.Status().Peers)
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, mf := range mfs {
		got[mf.GetName()] = mf.GetMetric()[0].GetCounter().GetValue()
	}
	if got["drover_fleet_messages_rejected_total"] != 1 {
		t.Fatalf("metrics %v, want drover_fleet_messages_rejected_total 1", got)
	}
}

// Attack (c): 200 forged invalidations, sent with valid proxy credentials,
// each paced until it has cost the backend a model-list refresh (or 25ms
// have passed), while requests keep reading the model list. Without
// coalescing (the control) nearly every one is a refresh at the fake
// backend; with the default of one per backend per second, the backend
// sees at most 2 refreshes plus one per second of the flood.
func TestInvalidationFloodIsCoalesced(t *testing.T) {
	srv := natstest.StartShipped(t)
	control := invalidationFlood(t, srv, time.Nanosecond)
	took := time.Now()
	guarded := invalidationFlood(t, srv, 0)
	secs := int64(time.Since(took)/time.Second) + 1
	t.Logf("200 forged invalidations: %d backend refreshes without coalescing, %d with it (over %ds)", control, guarded, secs)
	if control < 100 {
		t.Fatalf("only %d refreshes without coalescing: the flood did not reach the backend, the test proves nothing", control)
	}
	if guarded > 2+secs {
		t.Fatalf("%d refreshes over %ds, want at most %d", guarded, secs, 2+secs)
	}
}

// invalidationFlood runs one replica (fleet, sync) in front of a fake
// backend, sends it 200 forged invalidations and returns how many times
// the backend was asked for its models meanwhile.
func invalidationFlood(t *testing.T, srv *natstest.Server, every time.Duration) int64 {
	fake := ollamatest.New(ollamatest.Config{})
	if err := fake.Start(); err != nil {
		t.Fatal(err)
	}
	defer fake.Close()
	cfg, err := config.FromStruct(&config.Config{Replica: "r1", Backends: []config.Backend{{Name: "a", URL: fake.URL()}}})
	if err != nil {
		t.Fatal(err)
	}
	f := fleet.New(cfg, slog.New(slog.DiscardHandler), fleet.Hooks{})
	defer f.Close()
	b, _ := f.Backend("a")
	rep := startRouted(t, srv, Options{Replica: "r1", Heartbeat: time.Hour, Limits: LimitsFor(cfg), InvalidateEvery: every}, f.InvalidateLocal)
	defer rep.sync.Close()

	// Requests: each reads the model list, from cache unless invalidated.
	ctx, cancel := context.WithCancel(context.Background())
	var reads atomic.Int64
	done := make(chan struct{})
	go func() {
		defer close(done)
		for ctx.Err() == nil {
			if _, err := f.Models(ctx, b); err == nil {
				reads.Add(1)
			}
			time.Sleep(time.Millisecond)
		}
	}()
	waitFor(t, "the first model list", func() bool { return reads.Load() > 0 })
	before := fake.Requests("/api/tags")

	attacker := proxyConn(t, srv, "attacker")
	defer attacker.Close()
	for i := range 200 {
		backends := []string{"a"}
		if i%2 == 1 {
			backends = nil // every backend
		}
		msg, _ := json.Marshal(invalidateMsg{Replica: "ghost", Backends: backends})
		n := fake.Requests("/api/tags")
		if err := attacker.Publish(config.SubjectInvalidate, msg); err != nil {
			t.Fatal(err)
		}
		for deadline := time.Now().Add(25 * time.Millisecond); fake.Requests("/api/tags") == n && time.Now().Before(deadline); {
			time.Sleep(time.Millisecond)
		}
	}
	if err := attacker.Flush(); err != nil {
		t.Fatal(err)
	}
	if every != time.Nanosecond {
		// Everything held back is applied at the end of its interval.
		waitFor(t, "the merged invalidation", func() bool { return rep.sync.Coalesced.Load() > 0 && len(rep.sync.coal.pendingKeys()) == 0 })
		r := reads.Load()
		waitFor(t, "a request after it", func() bool { return reads.Load() > r+1 })
	}
	cancel()
	<-done
	return fake.Requests("/api/tags") - before
}
