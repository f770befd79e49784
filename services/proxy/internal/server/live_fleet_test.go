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
		cfg.Auth.Keys = []config.APIKey{{ID: "team-a", Key: "key-aaaa"}, {ID: "team-b", Key: "key-bbbb"}}
		loaded, err := config.FromStruct(cfg)
		if err != nil {
			t.Fatal(err)
		}
		pubConn, err := nats.Connect(ns.URL())
		if err != nil {
			t.Fatal(err)
		}
		syncConn, err := nats.Connect(ns.URL())
		if err != nil {
			t.Fatal(err)
		}
		pub, err := usagepub.New(pubConn, usagepub.WithConfig(loaded.NATS, config.Usage{SpoolDir: t.TempDir()}),
			usagepub.WithLogger(slog.New(slog.DiscardHandler)))
		if err != nil {
			t.Fatal(err)
		}
		s := New(loaded, slog.New(slog.DiscardHandler), Options{Sink: pub, SyncConn: syncConn, ClickHouse: store})
		t.Cleanup(func() {
			s.Close()
			cctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			pub.Close(cctx) //nolint:errcheck
			pubConn.Close()
			syncConn.Close()
		})
		reps = append(reps, s)
		urls = append(urls, serve(t, s))
	}
	waitFor(t, func() bool { return len(reps[0].Sync.Status().Peers) == 1 && len(reps[1].Sync.Status().Peers) == 1 })

	usageOf := func(url string) live.Snapshot {
		t.Helper()
		req, _ := http.NewRequest(http.MethodGet, url+"/api/usage", nil)
		req.Header.Set("Authorization", "Bearer key-aaaa")
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
