package ingest

import (
	"encoding/json"
	"reflect"
	"testing"
	"time"

	"github.com/droverhq/drover/pkg/usage"
)

func decodeSeeds(t testing.TB) [][]byte {
	full := usage.Event{
		Schema: usage.SchemaVersion, ID: usage.NewID(), Time: time.Date(2026, 3, 1, 12, 34, 56, 789000000, time.UTC),
		Replica: "proxy-1", Endpoint: "gpu-a:11434", Model: "llama3.2:3b", BackendModel: "llama3.2:3b-q4",
		APIKey: "team-a", Route: "/api/chat", API: usage.APIOllama, Status: 200,
		InputTokens: usage.Int64(12), OutputTokens: usage.Int64(340), Stream: true,
		TTFBMs: 41.5, DurationMs: 2200.25, Attempts: 1,
	}
	unknown := full
	unknown.InputTokens, unknown.OutputTokens, unknown.Error, unknown.Status = nil, nil, true, 502
	var out [][]byte
	for _, ev := range []usage.Event{full, unknown, {Schema: usage.SchemaVersion, ID: "x", Time: time.Unix(1, 0).UTC()}} {
		b, err := json.Marshal(ev)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, b)
	}
	return append(out,
		[]byte(` { "schema" : "usage.v1", "id":"a\u00e9", "time":"2026-03-01T12:00:00+02:00", "status": 2e2 } `),
		[]byte(`{"schema":"usage.v1","ID":"a","time":"2026-03-01T12:00:00Z","input_tokens":-0,"ttfb_ms":1E-3,"model":"é🦙"}`),
		[]byte(`{"schema":"usage.v1","id":"a","time":"2026-03-01T12:00:00Z","extra":{"x":[1,2]},"stream":null}`),
		[]byte(`{"schema":"usage.v1","id":"a","id":"b","time":"2026-03-01T12:00:00Z","output_tokens":1.0,"attempts":01}`),
		[]byte(`{"schema":"usage.v1","id":"a\xff","time":"2026-03-01T12:00:00Z","status":99999999999999999999}`),
		[]byte(`{"schema":"usage.v1","id":"a","time":"2026-03-01T12:00:00Z","route":"/v1/messages","api":"anthropic"}`),
		[]byte(`{"schema":"usage.v1","id":"a","time":"2026-03-01T12:00:00Z","api":null,"API":"x"}`),
		[]byte(`{}`), []byte(`{} x`), []byte(`[]`), []byte(`{"id":"a",}`), []byte(`{"error":truex}`),
	)
}

// The fast path must give exactly what encoding/json gives, or step aside.
func FuzzDecodeMatchesEncodingJSON(f *testing.F) {
	for _, s := range decodeSeeds(f) {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var fast usage.Event
		if !decodeFast(data, &fast) {
			return
		}
		var want usage.Event
		if err := json.Unmarshal(data, &want); err != nil {
			t.Fatalf("fast path accepted %q, encoding/json rejects it: %v", data, err)
		}
		if !reflect.DeepEqual(fast, want) {
			t.Fatalf("fast path decoded %q as\n%+v\nencoding/json as\n%+v", data, fast, want)
		}
	})
}

// Events as the proxies encode them must take the fast path.
func TestDecodeFastPathTakesEncodedEvents(t *testing.T) {
	for _, b := range decodeSeeds(t)[:3] {
		var ev usage.Event
		if !decodeFast(b, &ev) {
			t.Errorf("fast path refused %s", b)
		}
	}
}

func BenchmarkDecode(b *testing.B) {
	data := decodeSeeds(b)[0]
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Decode(data); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkDecodeEncodingJSON(b *testing.B) {
	data := decodeSeeds(b)[0]
	b.ReportAllocs()
	for b.Loop() {
		var ev usage.Event
		if err := json.Unmarshal(data, &ev); err != nil {
			b.Fatal(err)
		}
	}
}
