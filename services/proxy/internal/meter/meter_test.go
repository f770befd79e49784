package meter

import (
	"strings"
	"testing"

	"github.com/droverhq/drover/pkg/usage"
)

func TestCount(t *testing.T) {
	for _, tt := range []struct {
		tail string
		want int64
		ok   bool
	}{
		{`{"prompt_eval_count":12,"eval_count":340}`, 340, true},
		{`{"eval_count" : 7}`, 7, true},
		{`{"eval_count":"7"}`, 0, false},
		{`{"eval_count":}`, 0, false},
		{`{"x":1}`, 0, false},
		// Absurd counts, as a broken backend sent them, are saturated.
		{`{"eval_count":9223372036854775807}`, usage.MaxTokens, true},
		{`{"eval_count":99999999999999999999999999}`, usage.MaxTokens, true},
		{`{"eval_count":4294967297}`, usage.MaxTokens, true},
		{`{"eval_count":4294967296}`, usage.MaxTokens, true},
		{`{"eval_count":4294967295}`, 4294967295, true},
	} {
		var m Meter
		m.Write([]byte(tt.tail)) //nolint:errcheck
		if got, ok := m.Count("eval_count"); got != tt.want || ok != tt.ok {
			t.Errorf("%s: got %d %v, want %d %v", tt.tail, got, ok, tt.want, tt.ok)
		}
	}
}

// In a body that broke off, a count the bytes end in may have lost digits
// (eval_count 340 cut to 34): it is not read; one followed by anything is;
// Reset forgets the cut.
func TestCountCut(t *testing.T) {
	for _, tt := range []struct {
		tail string
		want int64
		ok   bool
	}{
		{`{"prompt_eval_count":12,"eval_count":34`, 0, false},
		{`{"prompt_eval_count":12,"eval_count":340,`, 340, true},
		{`{"prompt_eval_count":12,"eval_count":340}`, 340, true},
		{`{"prompt_eval_count":12,"eval_count": `, 0, false},
		{`{"prompt_eval_count":12,"eval_`, 0, false},
	} {
		var m Meter
		m.Write([]byte(tt.tail)) //nolint:errcheck
		m.MarkCut()
		if got, ok := m.Count("eval_count"); got != tt.want || ok != tt.ok || !m.Cut() {
			t.Errorf("cut %s: got %d %v, want %d %v", tt.tail, got, ok, tt.want, tt.ok)
		}
		m.Reset()
		m.Write([]byte(`{"eval_count":34`)) //nolint:errcheck
		if got, ok := m.Count("eval_count"); got != 34 || !ok || m.Cut() {
			t.Errorf("after Reset: got %d %v, cut %v; want 34 true, not cut", got, ok, m.Cut())
		}
	}
}

// The meter keeps the end of what it saw, whatever the writes' sizes.
func TestTailKeepsTheEnd(t *testing.T) {
	var m Meter
	body := strings.Repeat("x", 3*tailSize) + `{"done":true,"eval_count":5}`
	for i := 0; i < len(body); i += 1000 {
		m.Write([]byte(body[i:min(i+1000, len(body))])) //nolint:errcheck
	}
	if !strings.HasSuffix(string(m.Tail()), `{"done":true,"eval_count":5}`) || len(m.Tail()) < tailSize || len(m.Tail()) > 2*tailSize {
		t.Fatalf("tail of %d bytes", len(m.Tail()))
	}
	if n, ok := m.Count("eval_count"); !ok || n != 5 || !m.Has("done", "true") {
		t.Fatalf("count %d %v", n, ok)
	}
}

// One 64 MB NDJSON line without its newline, as a broken backend might
// send it, in 32 KiB reads: the meter keeps its end only, so the cost is
// linear and the memory two tails.
func BenchmarkMeterHugeLine(b *testing.B) {
	const total, read = 64 << 20, 32 << 10
	chunk := []byte(strings.Repeat("x", read))
	b.SetBytes(total)
	var m Meter
	for b.Loop() {
		m.Reset()
		for written := 0; written < total; written += read {
			m.Write(chunk) //nolint:errcheck
		}
		m.Count("eval_count")
	}
}
