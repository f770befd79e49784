package usage_test

import (
	"bytes"
	"encoding/json"
	"math"
	"testing"
	"time"

	"github.com/droverhq/drover/pkg/usage"
)

// AppendJSON must write exactly what json.Marshal writes: the aggregator,
// the schema and anyone reading the stream see one format.
func TestAppendJSONIsJSONMarshal(t *testing.T) {
	odd := "q\"b\\s/<x>&y\u2028z\u2029\x00\x01\x1f\b\f\n\r\t é 😀 \xff\xfe end"
	events := []usage.Event{
		fullEvent(),
		{},
		{Schema: usage.SchemaVersion, ID: usage.NewID(), Time: time.Date(2026, 1, 2, 3, 4, 5, 0, time.FixedZone("x", 3600)),
			Status: 502, Error: true, Attempts: 3},
		{Replica: odd, Endpoint: odd, Model: odd, BackendModel: odd, APIKey: odd, Route: odd, API: odd,
			InputTokens: usage.Int64(math.MaxInt64), OutputTokens: usage.Int64(-1), Stream: true, Status: -1},
		{Schema: usage.SchemaVersion, ID: usage.NewID(), Status: 200, Error: true, OutputTokens: usage.Int64(17), Stream: true, Partial: true},
	}
	for _, f := range []float64{0, 1, -1, 0.1, 1e-6, 9.99e-7, 1e-7, 123456789.125, 1e20, 1e21, 1.5e300, -2.5e-9, math.SmallestNonzeroFloat64} {
		ev := fullEvent()
		ev.TTFBMs, ev.DurationMs = f, -f
		events = append(events, ev)
	}
	for _, ev := range events {
		want, err := json.Marshal(ev)
		if err != nil {
			t.Fatal(err)
		}
		if got := usage.AppendJSON(nil, &ev); !bytes.Equal(got, want) {
			t.Errorf("AppendJSON\n got %s\nwant %s", got, want)
		}
	}
}

func BenchmarkAppendJSON(b *testing.B) {
	ev := fullEvent()
	buf := make([]byte, 0, 512)
	b.ReportAllocs()
	for b.Loop() {
		buf = usage.AppendJSON(buf[:0], &ev)
	}
}

func BenchmarkJSONMarshal(b *testing.B) {
	ev := fullEvent()
	b.ReportAllocs()
	for b.Loop() {
		json.Marshal(ev) //nolint:errcheck
	}
}
