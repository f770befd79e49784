package limits

import (
	"context"
	"testing"
	"time"

	"github.com/droverhq/drover/pkg/apikey"
	"github.com/droverhq/drover/pkg/config"
	"github.com/droverhq/drover/pkg/usage"
	"github.com/droverhq/drover/services/proxy/internal/auth"
)

// BenchmarkAdmitSettle is the ledger's cost per request of a limited key:
// estimate, admission against five limits, settlement.
func BenchmarkAdmitSettle(b *testing.B) {
	l := New(Options{Replica: "r1", Config: config.Limits{DefaultOutputTokens: 100}})
	defer l.Close()
	p := auth.Principal{ID: "k", Limits: apikey.Limits{RequestsPerMinute: 1 << 40, TokensPerMinute: 1 << 50, Concurrent: 1 << 20, TokensPerDay: 1 << 50, TokensPerMonth: 1 << 50}}
	body := []byte(`{"model":"tiny","messages":[{"role":"user","content":"hello there, how are you today?"}],"options":{"num_predict":64}}`)
	ev := usage.Event{Status: 200, Time: time.Now(), InputTokens: usage.Int64(20), OutputTokens: usage.Int64(64)}
	ctx := context.Background()
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			t, r := l.Admit(ctx, p, "tiny", "/api/chat", body)
			if r != nil {
				b.Fatal(r.Message)
			}
			e := ev
			t.Settle(&e)
		}
	})
}
