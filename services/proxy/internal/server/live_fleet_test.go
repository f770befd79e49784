package server

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/droverhq/drover/pkg/chstore"
	"github.com/droverhq/drover/pkg/config"
	"github.com/droverhq/drover/pkg/usage"
	"github.com/droverhq/drover/pkg/usagepub"
	"github.com/droverhq/drover/services/proxy/internal/live"
	"github.com/droverhq/drover/testkit/chtest"
	"github.com/droverhq/drover/testkit/natstest"
	"github.com/droverhq/drover/testkit/ollamatest"
)

// TestUsageShowsTheFleet: two replicas, wired as in production (usage
// published to JetStream, fleet sync over NATS, ClickHouse for totals).
// Each replica's /api/usage shows the other's in-flight requests, and token
// totals for the whole fleet: ClickHouse's plus everything published since,
// exactly what the backends reported.
func TestUsageShowsTheFleet(t *testing.T) {
	ch := chtest.Start(t)
	store, err := chstore.Open(chstore.Options{Addr: ch.Addr(), Database: "drover_fleet_usage"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })
	ctx := context.Background()
	if _, err := store.Migrate(ctx); err != nil {
		t.Fatal(err)
	}
	// History the aggregator stored before (a partition the stream does not
	// use here, so the stream does not hold these events).
	seeded := usage.Event{Schema: usage.SchemaVersion, ID: usage.NewID(), Time: time.Now().UTC().Add(-time.Hour),
		Endpoint: "a", Model: "tiny:latest", APIKey: "team-a", Route: "/api/chat", Status: 200,
		InputTokens: usage.Int64(1000), OutputTokens: usage.Int64(2000)}
	if err := store.InsertEvents(ctx, []chstore.EventRow{{Event: seeded, Partition: 50, Seq: 1}}); err != nil {
		t.Fatal(err)
	}

	ns := natstest.Start(t)
	ensureUsageStream(t, ns.URL())
	fake := ollamatest.New(ollamatest.Config{Chunks: 4, ChunkDelay: time.Millisecond})
	if err := fake.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(fake.Close)
	var urls []string
	var reps []*Server
	for i := range 2 {
		cfg := &config.Config{Replica: fmt.Sprintf("r%d", i), Backends: []config.Backend{{Name: "a", URL: fake.URL()}}}
		cfg.NATS.URL = ns.URL()
		cfg.NATS.Partitions = 4
		cfg.Auth.Keys = []config.APIKey{{ID: "team-a", Key: "key-aaaa"}, {ID: "team-b", Key: "key-bbbb"}, {ID: "ops", Key: "key-admin", Role: "admin"}}
		loaded, err := config.FromStruct(cfg)
		if err != nil {
			t.Fatal(err)
		}
		opts := natsOptions(t, loaded.NATS, usagepub.WithCreateStream())
		opts.ClickHouse = store
		s := New(loaded, slog.New(slog.DiscardHandler), opts)
		t.Cleanup(s.Close)
		reps = append(reps, s)
		urls = append(urls, serve(t, s))
	}
	waitFor(t, func() bool { return len(reps[0].Sync.Status().Peers) == 1 && len(reps[1].Sync.Status().Peers) == 1 })

	usageOf := func(url string) live.Snapshot {
		t.Helper()
		req, _ := http.NewRequest(http.MethodGet, url+"/api/usage", nil)
		req.Header.Set("Authorization", "Bearer key-admin") // the whole fleet's usage
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var s live.Snapshot
		if err := json.NewDecoder(resp.Body).Decode(&s); err != nil {
			t.Fatal(err)
		}
		return s
	}
	chat := func(ctx context.Context, url, key, fake string) error {
		body := `{"model":"tiny","stream":false,"messages":[{"role":"user","content":"hello there"}]` + fake + `}`
		req, _ := http.NewRequestWithContext(ctx, http.MethodPost, url+"/api/chat", strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+key)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		io.Copy(io.Discard, resp.Body) //nolint:errcheck
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("status %d", resp.StatusCode)
		}
		return nil
	}

	// In flight on r0 shows on r1.
	hctx, release := context.WithCancel(ctx)
	var held sync.WaitGroup
	for range 3 {
		held.Add(1)
		go func() {
			defer held.Done()
			chat(hctx, urls[0], "key-aaaa", `,"fake":{"hang":true}`) //nolint:errcheck // cancelled on purpose
		}()
	}
	waitFor(t, func() bool {
		s := usageOf(urls[1])
		return s.InFlight == 3 && len(s.LocalUsageCounts) == 0 && s.UsageCounts["a"] != nil
	})
	release()
	held.Wait()
	waitFor(t, func() bool { return usageOf(urls[1]).InFlight == 0 })

	// Tokens from both replicas and both keys, seen by each replica.
	for i := range 20 {
		if err := chat(ctx, urls[i%2], []string{"key-aaaa", "key-bbbb"}[i%3%2], ""); err != nil {
			t.Fatal(err)
		}
	}
	c := fake.Counters()
	wantTokens := c.PromptEvalCount + c.EvalCount + 3000
	for i, url := range urls {
		var last live.Snapshot
		deadline := time.Now().Add(15 * time.Second)
		for {
			last = usageOf(url)
			var got int64
			for _, models := range last.TokenUsageCounts {
				for _, n := range models {
					got += n
				}
			}
			keys := last.Keys["team-a"].InputTokens + last.Keys["team-a"].OutputTokens + last.Keys["team-b"].InputTokens + last.Keys["team-b"].OutputTokens
			if last.Tokens.Mode == live.ModeFleet && got == wantTokens && keys == wantTokens && last.Keys["team-b"].Requests > 0 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("replica %d: token source %+v, totals %v, keys %v; want %d tokens in all", i, last.Tokens, last.TokenUsageCounts, last.Keys, wantTokens)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
}

// ensureUsageStream makes the usage stream, as the aggregator (its owner)
// does at start.
func ensureUsageStream(t *testing.T, url string) {
	t.Helper()
	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := usage.EnsureStream(context.Background(), js, usage.StreamConfig{Name: config.DefaultStream, DuplicateWindow: time.Minute}); err != nil {
		t.Fatal(err)
	}
}

// TestUsageIsPrivate: two client keys and an admin on one replica, with the
// fleet's totals (NATS and ClickHouse) and with this replica's alone. A
// client key sees exactly its own usage on /api/usage and on
// /api/usage-stream (its key by ?api_key= or by header): its own key total,
// totals per endpoint and model that add up to it, none of the in-flight
// counts and no stream sequence (every key's activity); and its stream does
// not tick when another key's usage changes. The admin sees every key and
// what is in flight.
func TestUsageIsPrivate(t *testing.T) {
	for _, mode := range []string{live.ModeFleet, live.ModeLocal} {
		t.Run(mode, func(t *testing.T) { testUsageIsPrivate(t, mode) })
	}
}

func testUsageIsPrivate(t *testing.T, mode string) {
	ctx := context.Background()
	fake := ollamatest.New(ollamatest.Config{Chunks: 2, ChunkDelay: time.Millisecond})
	if err := fake.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(fake.Close)
	cfg := &config.Config{Replica: "r0", Backends: []config.Backend{{Name: "a", URL: fake.URL()}}}
	cfg.Auth.Keys = []config.APIKey{{ID: "team-a", Key: "key-aaaa"}, {ID: "team-b", Key: "key-bbbb"}, {ID: "ops", Key: "key-admin", Role: "admin"}}
	var opts Options
	if mode == live.ModeFleet {
		ch := chtest.Start(t)
		store, err := chstore.Open(chstore.Options{Addr: ch.Addr(), Database: "drover_private_usage"})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { store.Close() })
		if _, err := store.Migrate(ctx); err != nil {
			t.Fatal(err)
		}
		// History of both keys, stored before the replica started.
		var rows []chstore.EventRow
		for i, key := range []string{"team-a", "team-b"} {
			ev := usage.Event{Schema: usage.SchemaVersion, ID: usage.NewID(), Time: time.Now().UTC().Add(-time.Hour),
				Endpoint: "a", Model: "tiny:latest", APIKey: key, Route: "/api/chat", Status: 200,
				InputTokens: usage.Int64(int64(1000 * (i + 1))), OutputTokens: usage.Int64(int64(2000 * (i + 1)))}
			rows = append(rows, chstore.EventRow{Event: ev, Partition: 50, Seq: uint64(i + 1)})
		}
		if err := store.InsertEvents(ctx, rows); err != nil {
			t.Fatal(err)
		}
		ns := natstest.Start(t)
		ensureUsageStream(t, ns.URL())
		cfg.NATS.URL, cfg.NATS.Partitions = ns.URL(), 4
		loaded, err := config.FromStruct(cfg)
		if err != nil {
			t.Fatal(err)
		}
		opts = natsOptions(t, loaded.NATS, usagepub.WithCreateStream())
		opts.ClickHouse = store
	}
	loaded, err := config.FromStruct(cfg)
	if err != nil {
		t.Fatal(err)
	}
	srv := New(loaded, slog.New(slog.DiscardHandler), opts)
	t.Cleanup(srv.Close)
	url := serve(t, srv)

	get := func(key string) live.Snapshot {
		t.Helper()
		req, _ := http.NewRequest(http.MethodGet, url+"/api/usage", nil)
		req.Header.Set("Authorization", "Bearer "+key)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("/api/usage with %s: status %d", key, resp.StatusCode)
		}
		var s live.Snapshot
		if err := json.NewDecoder(resp.Body).Decode(&s); err != nil {
			t.Fatal(err)
		}
		return s
	}
	chat := func(ctx context.Context, key string, hang bool) {
		body := `{"model":"tiny","stream":false,"messages":[{"role":"user","content":"hello there"}]}`
		if hang {
			body = `{"model":"tiny","stream":false,"messages":[{"role":"user","content":"hi"}],"fake":{"hang":true}}`
		}
		req, _ := http.NewRequestWithContext(ctx, http.MethodPost, url+"/api/chat", strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+key)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			if !hang {
				t.Error(err)
			}
			return
		}
		defer resp.Body.Close()
		io.Copy(io.Discard, resp.Body) //nolint:errcheck
		if resp.StatusCode != http.StatusOK && !hang {
			t.Errorf("chat as %s: status %d", key, resp.StatusCode)
		}
	}
	for i := range 5 {
		chat(ctx, []string{"key-aaaa", "key-bbbb"}[i%2], false)
	}
	hctx, release := context.WithCancel(ctx)
	var held sync.WaitGroup
	held.Add(1)
	go func() { defer held.Done(); chat(hctx, "key-bbbb", true) }()
	defer func() { release(); held.Wait() }()

	wantRequests := map[string]int64{"team-a": 3, "team-b": 2}
	if mode == live.ModeFleet {
		wantRequests["team-a"]++
		wantRequests["team-b"]++
	}
	var all live.Snapshot
	waitFor(t, func() bool {
		all = get("key-admin")
		return all.Tokens.Mode == mode && all.InFlight == 1 && all.Keys["team-a"].Requests == wantRequests["team-a"] &&
			all.Keys["team-b"].Requests == wantRequests["team-b"] && (mode == live.ModeLocal || all.Tokens.Reason == "")
	})
	if all.Scope != live.ScopeAll || all.KeyID != "" || len(all.UsageCounts["a"]) != 1 || all.Tokens.Mode == live.ModeFleet && all.Tokens.StreamSeq == 0 {
		t.Fatalf("admin sees %+v, want every key and what is in flight", all)
	}

	// check is what a client key's snapshot must be: its own usage only.
	check := func(who string, s live.Snapshot, id string) {
		t.Helper()
		own := all.Keys[id]
		var tokens, requests int64
		for _, models := range s.Totals {
			for _, c := range models {
				requests += c.Requests
			}
		}
		for _, models := range s.TokenUsageCounts {
			for _, n := range models {
				tokens += n
			}
		}
		switch {
		case s.Scope != live.ScopeKey || s.KeyID != id:
			t.Fatalf("%s: scope %q key %q, want %q %q", who, s.Scope, s.KeyID, live.ScopeKey, id)
		case len(s.Keys) != 1 || s.Keys[id] != own:
			t.Fatalf("%s: key totals %v, want only %s: %+v", who, s.Keys, id, own)
		case tokens != own.InputTokens+own.OutputTokens || requests != own.Requests:
			t.Fatalf("%s: totals %v (%d tokens, %d requests), want %s's %+v", who, s.Totals, tokens, requests, id, own)
		case len(s.UsageCounts) != 0 || len(s.LocalUsageCounts) != 0 || s.InFlight != 0 || s.QueueLength != 0:
			t.Fatalf("%s: sees in-flight counts %v / %v (%d, queue %d), want none", who, s.UsageCounts, s.LocalUsageCounts, s.InFlight, s.QueueLength)
		case s.Tokens.Mode != mode || s.Tokens.StreamSeq != 0 || strings.Contains(s.Tokens.Reason, ": "):
			t.Fatalf("%s: token source %+v, want mode %s without the stream sequence or error detail", who, s.Tokens, mode)
		}
	}
	check("team-a on /api/usage", get("key-aaaa"), "team-a")
	check("team-b on /api/usage", get("key-bbbb"), "team-b")

	sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	streamA, err := openSSEAs(sctx, http.DefaultClient, url, func(r *http.Request) { r.URL.RawQuery = "api_key=key-aaaa" })
	if err != nil {
		t.Fatal(err)
	}
	defer streamA.close()
	streamB, err := openSSEAs(sctx, http.DefaultClient, url, func(r *http.Request) { r.Header.Set("Authorization", "Bearer key-bbbb") })
	if err != nil {
		t.Fatal(err)
	}
	defer streamB.close()
	streamAll, err := openSSEAs(sctx, http.DefaultClient, url, func(r *http.Request) { r.Header.Set("Authorization", "Bearer key-admin") })
	if err != nil {
		t.Fatal(err)
	}
	defer streamAll.close()
	firstA, err := streamA.snapshot()
	if err != nil {
		t.Fatal(err)
	}
	check("team-a on /api/usage-stream?api_key=", firstA, "team-a")
	firstB, err := streamB.snapshot()
	if err != nil {
		t.Fatal(err)
	}
	check("team-b on /api/usage-stream", firstB, "team-b")
	if s, err := streamAll.snapshot(); err != nil || s.Scope != live.ScopeAll || s.InFlight != 1 || len(s.Keys) < 2 {
		t.Fatalf("admin's stream: %+v (%v), want every key and what is in flight", s, err)
	}

	// team-b's usage changes: team-a's stream does not tick. Its next
	// snapshot is the one after its own request.
	chat(ctx, "key-bbbb", false)
	waitFor(t, func() bool { return get("key-admin").Keys["team-b"].Requests == wantRequests["team-b"]+1 })
	chat(ctx, "key-aaaa", false)
	nextA, err := streamA.snapshot()
	if err != nil {
		t.Fatal(err)
	}
	if nextA.Seq != firstA.Seq+1 || nextA.Keys["team-a"].Requests != wantRequests["team-a"]+1 || len(nextA.Keys) != 1 {
		t.Fatalf("team-a's stream: snapshot %d with %v after snapshot %d; want the next one, with its own request only", nextA.Seq, nextA.Keys, firstA.Seq)
	}

	// The key is accepted in the query on the stream only.
	resp, err := http.Get(url + "/api/usage?api_key=key-aaaa")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("/api/usage?api_key=: status %d, want 401", resp.StatusCode)
	}
}
