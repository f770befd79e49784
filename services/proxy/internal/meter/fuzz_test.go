package meter

import (
	"bytes"
	"testing"

	"github.com/droverhq/drover/pkg/usage"
)

// Whatever a backend's answer holds and however its reads fall, the meter
// keeps its end and reads the same counts as from the whole, within
// [0, usage.MaxTokens].
func FuzzMeter(f *testing.F) {
	f.Add([]byte(`{"model":"m","done":true,"prompt_eval_count":12,"eval_count":340}`), uint16(5), "eval_count")
	f.Add([]byte(`data: {"usage":{"prompt_tokens":9223372036854775807,"completion_tokens":1}}`+"\n\ndata: [DONE]\n\n"), uint16(1), "prompt_tokens")
	f.Add([]byte(`{"eval_count" :  99999999999999999999999}`), uint16(3), "eval_count")
	f.Add(bytes.Repeat([]byte(`{"eval_count":1}`), 3000), uint16(999), "eval_count")
	f.Fuzz(func(t *testing.T, body []byte, split uint16, key string) {
		size := int(split)%4096 + 1
		var m Meter
		for i := 0; i < len(body); i += size {
			m.Write(body[i:min(i+size, len(body))]) //nolint:errcheck // never fails
		}
		tail := body[max(len(body)-tailSize, 0):]
		if !bytes.HasSuffix(m.Tail(), tail) || len(m.Tail()) > 2*tailSize {
			t.Fatalf("tail of %d bytes does not end with the body's last %d", len(m.Tail()), len(tail))
		}
		n, ok := m.Count(key)
		if n < 0 || n > usage.MaxTokens || (!ok && n != 0) {
			t.Fatalf("count %q: %d %v", key, n, ok)
		}
		// A body that fits the tail reads as it would in one write.
		if len(body) <= tailSize {
			if n2, ok2 := lastInt(body, key, false); n2 != n || ok2 != ok {
				t.Fatalf("count %q: %d %v split, %d %v whole", key, n, ok, n2, ok2)
			}
		}
		m.Has(key, "true")
	})
}
