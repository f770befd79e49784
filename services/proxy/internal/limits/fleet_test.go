package limits

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/droverhq/drover/pkg/apikey"
	"github.com/droverhq/drover/pkg/config"
	"github.com/droverhq/drover/pkg/usage"
	"github.com/droverhq/drover/services/proxy/internal/auth"
	"github.com/droverhq/drover/testkit/natstest"
)

// fleetOf starts n ledgers sharing one NATS server and waits until each
// has heard from the others.
func fleetOf(t *testing.T, n int) []*Ledger {
	t.Helper()
	ns := natstest.Start(t)
	var out []*Ledger
	for i := range n {
		nc, err := nats.Connect(ns.URL(), nats.NoEcho())
		if err != nil {
			t.Fatal(err)
		}
		// A planned delay well above what a loaded test machine shows, so
		// that the test checks the sharing, not the scheduler.
		l := New(Options{Replica: string(rune('a' + i)), Conn: nc, Delay: 250 * time.Millisecond, Config: config.Limits{DefaultOutputTokens: 10}})
		t.Cleanup(func() { l.Close(); nc.Close() })
		out = append(out, l)
	}
	deadline := time.Now().Add(5 * time.Second)
	for _, l := range out {
		for {
			l.mu.Lock()
			known := len(l.peers)
			l.mu.Unlock()
			if known == n-1 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatal("ledgers never heard from each other")
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	return out
}

// TestFleetBurst: a burst of admissions at once on three ledgers against
// one limit, requests settling at once. What is admitted stays within the
// limit plus one request per other replica (docs/limits.md).
func TestFleetBurst(t *testing.T) {
	for _, c := range []struct {
		name string
		lim  apikey.Limits
		cap  int64
		hold bool // keep requests in flight (concurrent)
	}{
		{"requests_per_minute", apikey.Limits{RequestsPerMinute: 30}, 30, false},
		{"tokens_per_day", apikey.Limits{TokensPerDay: 300}, 300 / 11, false},
		{"concurrent", apikey.Limits{Concurrent: 3}, 3, true},
	} {
		t.Run(c.name, func(t *testing.T) {
			fleet := fleetOf(t, 3)
			p := auth.Principal{ID: "k", Limits: c.lim}
			var admitted atomic.Int64
			var held sync.Mutex
			var tickets []*Ticket
			var wg sync.WaitGroup
			for i := range 90 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					l := fleet[i%3]
					tk, r := l.Admit(context.Background(), p, "m", "/api/chat", []byte(`{"options":{"num_predict":10}}`)) // 8 + 10 reserved
					if r != nil {
						return
					}
					admitted.Add(1)
					if c.hold {
						held.Lock()
						tickets = append(tickets, tk)
						held.Unlock()
						return
					}
					tk.Settle(&usage.Event{ID: usage.NewID(), Status: 200, Time: time.Now(), InputTokens: usage.Int64(1), OutputTokens: usage.Int64(10)})
				}()
			}
			wg.Wait()
			t.Logf("%s: admitted %d, limit %d", c.name, admitted.Load(), c.cap)
			if admitted.Load() > c.cap+2 {
				t.Fatalf("admitted %d, limit %d, bound %d", admitted.Load(), c.cap, c.cap+2)
			}
			for _, tk := range tickets {
				tk.Release()
			}
		})
	}
}
