package usage_test

import (
	"strings"
	"testing"
	"time"

	"github.com/droverhq/drover/pkg/usage"
)

func TestEventCount(t *testing.T) {
	cases := []struct {
		name    string
		err     bool
		in, out *int64
		want    usage.Count
	}{
		{"known", false, usage.Int64(12), usage.Int64(340), usage.Count{Requests: 1, InputTokens: 12, OutputTokens: 340}},
		{"zero tokens are known", false, usage.Int64(0), usage.Int64(0), usage.Count{Requests: 1}},
		{"unknown", false, nil, nil, usage.Count{Requests: 1, UnknownTokens: 1}},
		{"unknown error", true, nil, nil, usage.Count{Requests: 1, Errors: 1, UnknownTokens: 1}},
		{"error with tokens", true, usage.Int64(7), usage.Int64(3), usage.Count{Requests: 1, Errors: 1, InputTokens: 7, OutputTokens: 3}},
		{"only input known", false, usage.Int64(5), nil, usage.Count{Requests: 1, InputTokens: 5, UnknownTokens: 1}},
		{"only output known", false, nil, usage.Int64(9), usage.Count{Requests: 1, OutputTokens: 9, UnknownTokens: 1}},
		{"negative adds zero", false, usage.Int64(-4), usage.Int64(2), usage.Count{Requests: 1, OutputTokens: 2}},
	}
	var total usage.Count
	for _, c := range cases {
		ev := usage.Event{Error: c.err, InputTokens: c.in, OutputTokens: c.out}
		if got := ev.Count(); got != c.want {
			t.Errorf("%s: Count() = %+v, want %+v", c.name, got, c.want)
		}
		total.Add(ev.Count())
	}
	want := usage.Count{Requests: 8, Errors: 2, InputTokens: 24, OutputTokens: 354, UnknownTokens: 4}
	if total != want || total.TotalTokens() != 378 {
		t.Fatalf("sum %+v (total %d), want %+v (total 378)", total, total.TotalTokens(), want)
	}
}

// Totals is a sum of Event.Count per endpoint and model, skipping events
// that never reached a backend.
func TestTotalsAddEventCounts(t *testing.T) {
	tot := usage.NewTotals()
	evs := []usage.Event{
		{Endpoint: "a", Model: "m", InputTokens: usage.Int64(1), OutputTokens: usage.Int64(2)},
		{Endpoint: "a", Model: "m", Error: true},
		{Endpoint: "", Model: "m", Error: true},
	}
	var want usage.Count
	for _, ev := range evs {
		tot.Record(ev)
		if ev.Endpoint != "" {
			want.Add(ev.Count())
		}
	}
	snap := tot.Snapshot()
	if len(snap) != 1 || snap["a"]["m"] != want {
		t.Fatalf("totals %+v, want a/m %+v", snap, want)
	}
}

func TestValidate(t *testing.T) {
	good := usage.Event{Schema: usage.SchemaVersion, ID: "x", Time: time.Unix(1, 0).UTC()}
	if err := usage.Validate(good); err != nil {
		t.Fatalf("minimal event rejected: %v", err)
	}
	cases := map[string]struct {
		mutate func(*usage.Event)
		want   string
	}{
		"wrong schema":    {func(e *usage.Event) { e.Schema = "usage.v2" }, "schema"},
		"no id":           {func(e *usage.Event) { e.ID = "" }, "without id"},
		"no time":         {func(e *usage.Event) { e.Time = time.Time{} }, "without time"},
		"negative input":  {func(e *usage.Event) { e.InputTokens = usage.Int64(-1) }, "negative"},
		"negative output": {func(e *usage.Event) { e.OutputTokens = usage.Int64(-1) }, "negative"},
	}
	for name, c := range cases {
		ev := good
		c.mutate(&ev)
		if err := usage.Validate(ev); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: Validate = %v, want an error about %q", name, err, c.want)
		}
	}
}
