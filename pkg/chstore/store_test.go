package chstore_test

import (
	"context"
	"testing"
	"time"

	"github.com/droverhq/drover/pkg/chstore"
	"github.com/droverhq/drover/pkg/usage"
	"github.com/droverhq/drover/testkit/chtest"
)

func openStore(t *testing.T) *chstore.Store {
	t.Helper()
	srv := chtest.Start(t)
	s, err := chstore.Open(chstore.Options{Addr: srv.Addr(), Database: "drover_test"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func TestMigrateIsIdempotent(t *testing.T) {
	s := openStore(t)
	ctx := context.Background()
	all, err := chstore.Migrations()
	if err != nil {
		t.Fatal(err)
	}
	applied, err := s.Migrate(ctx)
	if err != nil {
		t.Fatalf("first migrate: %v", err)
	}
	if len(applied) != len(all) {
		t.Fatalf("first migrate applied %v, want all %d", applied, len(all))
	}
	again, err := s.Migrate(ctx)
	if err != nil {
		t.Fatalf("second migrate: %v", err)
	}
	if len(again) != 0 {
		t.Fatalf("second migrate applied %v, want nothing", again)
	}
	// Every statement must also survive being run again on its own, as after
	// a migration interrupted before it was recorded.
	v, err := s.ServerVersion(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range all {
		stmts, err := m.Render(s.Database(), v)
		if err != nil {
			t.Fatal(err)
		}
		if len(stmts) == 0 {
			t.Fatalf("%s renders no statements", m.Name)
		}
		for _, stmt := range stmts {
			if err := chstore.ExecForTest(ctx, s, stmt); err != nil {
				t.Fatalf("%s re-run: %v\n%s", m.Name, err, stmt)
			}
		}
	}
}

func TestRenderModern(t *testing.T) {
	all, err := chstore.Migrations()
	if err != nil {
		t.Fatal(err)
	}
	modern, _ := chstore.ParseVersion("24.8.4.13")
	old, _ := chstore.ParseVersion("18.16.1")
	var sawLC, sawTTL bool
	for _, m := range all {
		for _, v := range []chstore.Version{modern, old} {
			stmts, err := m.Render("drover", v)
			if err != nil {
				t.Fatal(err)
			}
			for _, s := range stmts {
				hasLC := contains(s, "LowCardinality")
				hasTTL := contains(s, "TTL ")
				if v == old && (hasLC || hasTTL || contains(s, "CODEC")) {
					t.Fatalf("%s uses a modern feature on 18.16:\n%s", m.Name, s)
				}
				sawLC = sawLC || hasLC
				sawTTL = sawTTL || hasTTL
			}
		}
	}
	if !sawLC || !sawTTL {
		t.Fatal("modern rendering uses neither LowCardinality nor TTL")
	}
}

func contains(s, sub string) bool {
	for i := 0; i+len(sub) <= len(s); i++ {
		if s[i:i+len(sub)] == sub {
			return true
		}
	}
	return false
}

func TestInsertCommittedUsage(t *testing.T) {
	s := openStore(t)
	ctx := context.Background()
	if _, err := s.Migrate(ctx); err != nil {
		t.Fatal(err)
	}
	base := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	ev := func(min int, model, endpoint string, in, out int64, known bool) usage.Event {
		e := usage.Event{Schema: usage.SchemaVersion, ID: usage.NewID(), Time: base.Add(time.Duration(min)*time.Minute + 1500*time.Millisecond),
			Endpoint: endpoint, Model: model, APIKey: "k1", Route: "/api/chat", Status: 200, DurationMs: 10, TTFBMs: 2, Attempts: 1}
		if known {
			e.InputTokens, e.OutputTokens = usage.Int64(in), usage.Int64(out)
		}
		return e
	}
	rows := []chstore.EventRow{
		{Event: ev(0, "llama3.2:3b", "a", 10, 5, true), Partition: 1, Seq: 3},
		{Event: ev(0, "llama3.2:3b", "a", 1, 2, true), Partition: 1, Seq: 7},
		{Event: ev(1, "llama3.2:3b", "b", 100, 50, true), Partition: 2, Seq: 9},
		{Event: ev(61, "qwen", "b", 0, 0, false), Partition: 2, Seq: 11},
	}
	if err := s.InsertEvents(ctx, rows); err != nil {
		t.Fatal(err)
	}
	got, err := s.Committed(ctx, []int{0, 1, 2})
	if err != nil {
		t.Fatal(err)
	}
	if got[0] != 0 || got[1] != 7 || got[2] != 11 {
		t.Fatalf("committed = %v, want 0:0 1:7 2:11", got)
	}

	byModel, err := s.Usage(ctx, chstore.UsageQuery{GroupBy: []chstore.Dimension{chstore.ByModel}})
	if err != nil {
		t.Fatal(err)
	}
	if len(byModel) != 2 || byModel[0].Model != "llama3.2:3b" || byModel[0].TotalTokens != 168 || byModel[0].Requests != 3 ||
		byModel[1].Model != "qwen" || byModel[1].TokensUnknown != 1 || byModel[1].TotalTokens != 0 {
		t.Fatalf("by model = %+v", byModel)
	}
	hourly, err := s.Usage(ctx, chstore.UsageQuery{Bucket: time.Hour, Since: base, Until: base.Add(24 * time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	if len(hourly) != 2 || !hourly[0].Bucket.Equal(base) || hourly[0].Requests != 3 || !hourly[1].Bucket.Equal(base.Add(time.Hour)) {
		t.Fatalf("hourly = %+v", hourly)
	}
	filtered, err := s.Usage(ctx, chstore.UsageQuery{Model: "llama3.2:3b", Endpoint: "a", Bucket: time.Minute,
		GroupBy: []chstore.Dimension{chstore.ByEndpoint, chstore.ByAPIKey}})
	if err != nil {
		t.Fatal(err)
	}
	if len(filtered) != 1 || filtered[0].InputTokens != 11 || filtered[0].OutputTokens != 7 || filtered[0].APIKey != "k1" ||
		filtered[0].DurationMsSum != 20 {
		t.Fatalf("filtered = %+v", filtered)
	}
}
