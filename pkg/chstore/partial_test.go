package chstore_test

import (
	"context"
	"testing"
	"time"

	"github.com/droverhq/drover/pkg/chstore"
	"github.com/droverhq/drover/pkg/usage"
)

// A partial event (a stream cut short, usage.Event.Partial) counts in the
// totals like any event and again in the partial sums, grouped by key and
// by API alike; a whole event adds nothing to the partial sums.
func TestPartialUsageIsInTotalsAndShownApart(t *testing.T) {
	s := openStore(t)
	ctx := context.Background()
	if _, err := s.Migrate(ctx); err != nil {
		t.Fatal(err)
	}
	at := time.Date(2026, 12, 6, 9, 30, 0, 0, time.UTC)
	ev := func(id string, partial bool, in *int64, out int64) usage.Event {
		return usage.Event{Schema: usage.SchemaVersion, ID: id, Time: at, Endpoint: "gpu-a", Model: "tiny", APIKey: "k1",
			Route: "/api/chat", API: "ollama", Status: 200, Error: partial, InputTokens: in, OutputTokens: usage.Int64(out), Stream: true, Attempts: 1, Partial: partial}
	}
	rows := []chstore.EventRow{
		{Event: ev("whole", false, usage.Int64(10), 20), Seq: 1},
		{Event: ev("cut", true, nil, 7), Seq: 2},
		{Event: ev("cancelled", true, usage.Int64(4), 3), Seq: 3},
	}
	if err := s.InsertEvents(ctx, rows); err != nil {
		t.Fatal(err)
	}
	want := chstore.Sums{Requests: 3, Errors: 2, InputTokens: 14, OutputTokens: 30, TotalTokens: 44, TokensUnknown: 1,
		PartialRequests: 2, PartialInputTokens: 4, PartialOutputTokens: 10}
	for name, q := range map[string]chstore.UsageQuery{
		"by key": {GroupBy: []chstore.Dimension{chstore.ByAPIKey}},
		"by api": {GroupBy: []chstore.Dimension{chstore.ByAPI}},
		"filter": {Model: "tiny", Since: at.Add(-time.Hour)},
	} {
		got, err := s.Usage(ctx, q)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if len(got) != 1 || got[0].Sums != want {
			t.Fatalf("%s: got %+v, want one row of %+v", name, got, want)
		}
	}
}
