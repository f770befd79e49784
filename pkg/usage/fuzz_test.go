package usage_test

import (
	"bytes"
	"encoding/json"
	"testing"

	"github.com/droverhq/drover/pkg/usage"
)

// Any event a stream can carry: AppendJSON writes what json.Marshal
// writes, Validate and Count never fail on it, and Count stays within
// [0, usage.MaxTokens] per token count however absurd the event's.
func FuzzEventJSON(f *testing.F) {
	f.Add([]byte(`{"schema":"usage.v1","id":"0190","time":"2026-03-01T12:00:00Z","endpoint":"a","model":"m","api_key":"k","route":"/api/chat","status":200,"error":false,"input_tokens":12,"output_tokens":340,"stream":true,"ttfb_ms":1.5,"duration_ms":20,"attempts":1}`))
	f.Add([]byte(`{"schema":"usage.v1","id":"x","time":"2026-03-01T12:00:00+02:00","input_tokens":9223372036854775807,"output_tokens":9223372036854775807}`))
	f.Add([]byte(`{"input_tokens":-1,"output_tokens":null,"model":"q\"\\\u2028\ud800","ttfb_ms":1e308}`))
	f.Add([]byte(`{"time":"0001-01-01T00:00:00Z","status":-5,"attempts":99999}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		var ev usage.Event
		if json.Unmarshal(data, &ev) != nil {
			return
		}
		usage.Validate(ev) //nolint:errcheck // must not panic
		c := ev.Count()
		if c.InputTokens < 0 || c.InputTokens > usage.MaxTokens || c.OutputTokens < 0 || c.OutputTokens > usage.MaxTokens || c.TotalTokens() < 0 {
			t.Fatalf("count %+v of %s", c, data)
		}
		want, err := json.Marshal(ev)
		if err != nil {
			return // a time json.Marshal refuses (year past 9999)
		}
		if got := usage.AppendJSON(nil, &ev); !bytes.Equal(got, want) {
			t.Fatalf("AppendJSON\n got %s\nwant %s", got, want)
		}
	})
}
