package usage_test

import (
	"math"
	"testing"

	"github.com/droverhq/drover/pkg/usage"
)

// A backend reporting an absurd count (the largest int64, here on both
// sides) once made a total of -2. Counts are saturated at MaxTokens and sums
// saturate instead of wrapping.
func TestAbsurdTokenCountsSaturate(t *testing.T) {
	ev := usage.Event{InputTokens: usage.Int64(math.MaxInt64), OutputTokens: usage.Int64(math.MaxInt64)}
	c := ev.Count()
	if c.InputTokens != usage.MaxTokens || c.OutputTokens != usage.MaxTokens || c.TotalTokens() != 2*usage.MaxTokens {
		t.Fatalf("one absurd event counts %+v, total %d", c, c.TotalTokens())
	}
	total := usage.Count{InputTokens: math.MaxInt64 - 1}
	total.Add(c)
	if total.InputTokens != math.MaxInt64 || total.TotalTokens() != math.MaxInt64 {
		t.Fatalf("a sum past int64 wrapped: %+v, total %d", total, total.TotalTokens())
	}
	totals := usage.NewTotals()
	for range 3 {
		totals.Record(usage.Event{Endpoint: "e", Model: "m", InputTokens: usage.Int64(math.MaxInt64), OutputTokens: usage.Int64(math.MaxInt64)})
	}
	if got := totals.Snapshot()["e"]["m"]; got.InputTokens != 3*usage.MaxTokens || got.TotalTokens() < 0 {
		t.Fatalf("replica totals %+v", got)
	}
	if usage.ClampTokens(-5) != 0 || usage.ClampTokens(17) != 17 {
		t.Fatal("ClampTokens changes ordinary counts")
	}
}
