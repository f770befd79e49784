package chstore_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/droverhq/drover/pkg/chstore"
	"github.com/droverhq/drover/pkg/usage"
)

// ClickHouse's token_usage_minute (usage_events and its materialized view)
// must add events up exactly as usage.Event.Count does, the rule behind
// every total the proxies show: the same events go to both, and every group
// and the grand total must agree, edge cases included.
func TestTokenUsageMinuteCountsAsEventCount(t *testing.T) {
	s := openStore(t)
	ctx := context.Background()
	if _, err := s.Migrate(ctx); err != nil {
		t.Fatal(err)
	}
	type key struct{ endpoint, model, apiKey string }
	want := map[key]usage.Count{}
	var grand usage.Count
	var rows []chstore.EventRow
	for i, ev := range countEvents(t) {
		rows = append(rows, chstore.EventRow{Event: ev, Partition: uint16(i % 4), Seq: uint64(i + 1)})
		kk := key{ev.Endpoint, ev.Model, ev.APIKey}
		c := want[kk]
		c.Add(ev.Count())
		want[kk] = c
		grand.Add(ev.Count())
	}
	// Several blocks, so that the sums also cross SummingMergeTree parts.
	for len(rows) > 0 {
		n := min(len(rows), 25)
		if err := s.InsertEvents(ctx, rows[:n]); err != nil {
			t.Fatal(err)
		}
		rows = rows[n:]
	}

	got, err := s.Usage(ctx, chstore.UsageQuery{GroupBy: []chstore.Dimension{chstore.ByEndpoint, chstore.ByModel, chstore.ByAPIKey}})
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(want) {
		t.Fatalf("clickhouse has %d groups, Event.Count %d", len(got), len(want))
	}
	for _, r := range got {
		w, ok := want[key{r.Endpoint, r.Model, r.APIKey}]
		if !ok {
			t.Fatalf("clickhouse group %+v was never sent", r)
		}
		if diff := compare(r, w); diff != "" {
			t.Errorf("group %s/%s/%s: %s", r.Endpoint, r.Model, r.APIKey, diff)
		}
	}
	all, err := s.Usage(ctx, chstore.UsageQuery{})
	if err != nil {
		t.Fatal(err)
	}
	if len(all) != 1 {
		t.Fatalf("grand total: %d rows", len(all))
	}
	if diff := compare(all[0], grand); diff != "" {
		t.Errorf("grand total: %s", diff)
	}
	if grand.UnknownTokens == 0 || grand.Errors == 0 || grand.InputTokens == 0 {
		t.Fatalf("the events exercise nothing: %+v", grand)
	}
}

var countKinds = []struct {
	name     string
	err      bool
	in, out  *int64
	endpoint string
}{
	{name: "known", in: usage.Int64(12), out: usage.Int64(340)},
	{name: "zero tokens", in: usage.Int64(0), out: usage.Int64(0)},
	{name: "unknown", in: nil, out: nil},
	{name: "unknown error", err: true},
	{name: "error with tokens", err: true, in: usage.Int64(7), out: usage.Int64(3)},
	{name: "only input known", in: usage.Int64(5)},
	{name: "only output known", out: usage.Int64(9)},
	{name: "large", in: usage.Int64(1 << 40), out: usage.Int64(1 << 41)},
	{name: "no backend", err: true, endpoint: "-"},
}

// countEvents are 90 events over several minutes mixing the kinds above,
// endpoints, models, keys and routes of all four APIs; a third without api, as
// events published before the field existed, named by their route.
func countEvents(t *testing.T) []usage.Event {
	t.Helper()
	base := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	routes := []string{"/api/chat", "/v1/chat/completions", "/v1/messages", "/v1/responses", "/api/generate"}
	var out []usage.Event
	for i := range 90 {
		k := countKinds[i%len(countKinds)]
		route := routes[(i/2)%len(routes)]
		ev := usage.Event{
			Schema: usage.SchemaVersion, ID: fmt.Sprintf("ev-%d", i),
			Time:     base.Add(time.Duration(i) * 7 * time.Second), // spans several minutes
			Endpoint: []string{"gpu-a", "gpu-b"}[i%2], Model: []string{"tiny", "llama3.2:3b", "qwen"}[i%3],
			APIKey: []string{"team-a", "team-b"}[i/45], Route: route, Status: 200,
			Error: k.err, InputTokens: k.in, OutputTokens: k.out, Attempts: 1,
		}
		if i%3 != 0 {
			ev.API = usage.APIOf(route)
		}
		if k.err {
			ev.Status = 502
		}
		if k.endpoint == "-" {
			ev.Endpoint = ""
		}
		if err := usage.Validate(ev); err != nil {
			t.Fatalf("%s: %v", k.name, err)
		}
		out = append(out, ev)
	}
	return out
}

// token_usage_minute_by_api (0005) must add events up as usage.Event.Count
// does too, per API as usage.APIOf names it (events without api by their
// route), and agree with token_usage_minute in total.
func TestTokenUsageMinuteByAPICountsAsEventCount(t *testing.T) {
	s := openStore(t)
	ctx := context.Background()
	if _, err := s.Migrate(ctx); err != nil {
		t.Fatal(err)
	}
	type key struct{ api, endpoint, model, apiKey string }
	want := map[key]usage.Count{}
	perAPI := map[string]usage.Count{}
	var grand usage.Count
	var rows []chstore.EventRow
	for i, ev := range countEvents(t) {
		rows = append(rows, chstore.EventRow{Event: ev, Partition: uint16(i % 4), Seq: uint64(i + 1)})
		api := usage.APIOf(ev.Route)
		kk := key{api, ev.Endpoint, ev.Model, ev.APIKey}
		c := want[kk]
		c.Add(ev.Count())
		want[kk] = c
		c = perAPI[api]
		c.Add(ev.Count())
		perAPI[api] = c
		grand.Add(ev.Count())
	}
	for len(rows) > 0 {
		n := min(len(rows), 25)
		if err := s.InsertEvents(ctx, rows[:n]); err != nil {
			t.Fatal(err)
		}
		rows = rows[n:]
	}

	got, err := s.Usage(ctx, chstore.UsageQuery{GroupBy: []chstore.Dimension{chstore.ByAPI, chstore.ByEndpoint, chstore.ByModel, chstore.ByAPIKey}})
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(want) {
		t.Fatalf("clickhouse has %d groups, Event.Count %d", len(got), len(want))
	}
	for _, r := range got {
		w, ok := want[key{r.API, r.Endpoint, r.Model, r.APIKey}]
		if !ok {
			t.Fatalf("clickhouse group %+v was never sent", r)
		}
		if diff := compare(r, w); diff != "" {
			t.Errorf("group %s/%s/%s/%s: %s", r.API, r.Endpoint, r.Model, r.APIKey, diff)
		}
	}
	if len(perAPI) != 4 {
		t.Fatalf("the events exercise %d APIs, want all 4", len(perAPI))
	}
	for api, w := range perAPI {
		one, err := s.Usage(ctx, chstore.UsageQuery{API: api})
		if err != nil {
			t.Fatal(err)
		}
		if len(one) != 1 {
			t.Fatalf("api=%s: %d rows", api, len(one))
		}
		if diff := compare(one[0], w); diff != "" {
			t.Errorf("api=%s: %s", api, diff)
		}
	}
	byAPI, err := s.Usage(ctx, chstore.UsageQuery{GroupBy: []chstore.Dimension{chstore.ByAPI}})
	if err != nil {
		t.Fatal(err)
	}
	var sum chstore.Sums
	for _, r := range byAPI {
		sum.Add(r.Sums)
	}
	all, err := s.Usage(ctx, chstore.UsageQuery{})
	if err != nil {
		t.Fatal(err)
	}
	if len(all) != 1 || all[0].Sums != sum {
		t.Fatalf("token_usage_minute %+v, token_usage_minute_by_api summed %+v", all, sum)
	}
	if diff := compare(chstore.UsageRow{Sums: sum}, grand); diff != "" {
		t.Errorf("grand total by api: %s", diff)
	}
}

// compare reports how r differs from c ("" when it does not).
func compare(r chstore.UsageRow, c usage.Count) string {
	got := [6]int64{int64(r.Requests), int64(r.Errors), int64(r.InputTokens), int64(r.OutputTokens), int64(r.TotalTokens), int64(r.TokensUnknown)}
	want := [6]int64{c.Requests, c.Errors, c.InputTokens, c.OutputTokens, c.TotalTokens(), c.UnknownTokens}
	if got != want {
		return fmt.Sprintf("clickhouse [requests errors in out total unknown] = %v, Event.Count %v", got, want)
	}
	return ""
}
