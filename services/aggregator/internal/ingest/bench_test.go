package ingest_test

import (
	"math/rand/v2"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/droverhq/drover/pkg/chstore"
	"github.com/droverhq/drover/services/aggregator/internal/ingest"
)

// defaults mirrors the production defaults of pkg/config.
func defaults(o *ingest.Options) {
	o.BatchSize, o.FlushInterval, o.FetchBatch = 20000, 500*time.Millisecond, 2000
}

// BenchmarkIngest reports how fast a backlog of b.N events moves from
// JetStream into ClickHouse at default settings:
//
//	go test -run '^$' -bench Ingest -benchtime 300000x ./internal/ingest/
func BenchmarkIngest(b *testing.B) {
	e := newEnv(b)
	e.publish(b.N, 42)
	b.ResetTimer()
	start := time.Now()
	var first time.Time
	g := e.startAgg("bench", defaults)
	for counter(g.m.EventsInserted) < float64(b.N) {
		if first.IsZero() && counter(g.m.EventsInserted) > 0 {
			first = time.Now()
		}
		time.Sleep(2 * time.Millisecond)
	}
	elapsed := time.Since(start)
	b.StopTimer()
	// events/s counts from start-up (leases, consumers) to the last insert;
	// steady-events/s from the first insert on.
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "events/s")
	if !first.IsZero() {
		b.ReportMetric(float64(b.N)/time.Since(first).Seconds(), "steady-events/s")
	}
	var hm dtoMetric
	_ = g.m.InsertSeconds.Write(&hm)
	if h := hm.GetHistogram(); h.GetSampleCount() > 0 {
		b.ReportMetric(h.GetSampleSum()/float64(h.GetSampleCount())*1000, "insert-ms/op")
		b.ReportMetric(float64(b.N)/float64(h.GetSampleCount()), "rows/insert")
		b.ReportMetric(h.GetSampleSum()/elapsed.Seconds()*100, "insert-busy-%")
	}
	if rows, _ := e.rawCounts(); rows != uint64(b.N) {
		b.Fatalf("usage_events has %d rows, want %d", rows, b.N)
	}
}

// BenchmarkDelay publishes at a steady rate with the aggregator running and
// reports the delay from publish to the row being stored (an insert that
// returned is visible to queries), p50 and p99, at default settings. b.N
// events are published at 20,000 events/s.
//
//	go test -run '^$' -bench Delay -benchtime 100000x ./internal/ingest/
func BenchmarkDelay(b *testing.B) {
	e := newEnv(b)
	var mu sync.Mutex // guards delays
	var delays []time.Duration
	g := e.startAgg("bench", defaults, func(o *ingest.Options) {
		o.AfterInsert = func(rows []chstore.EventRow) error {
			now := time.Now()
			mu.Lock()
			for _, r := range rows {
				delays = append(delays, now.Sub(r.Event.Time))
			}
			mu.Unlock()
			return nil
		}
	})
	const rate = 20000
	const tick = 10 * time.Millisecond
	perTick := rate * int(tick) / int(time.Second)
	r := rand.New(rand.NewPCG(1, 2))
	b.ResetTimer()
	ticker := time.NewTicker(tick)
	defer ticker.Stop()
	for sent := 0; sent < b.N; sent += perTick {
		<-ticker.C
		n := min(perTick, b.N-sent)
		for range n {
			ev := e.event(r, time.Now())
			if _, err := e.js.PublishMsgAsync(eventMsg(ev)); err != nil {
				b.Fatal(err)
			}
			e.expect(ev)
		}
	}
	select {
	case <-e.js.PublishAsyncComplete():
	case <-time.After(30 * time.Second):
		b.Fatal("publishes not acknowledged")
	}
	deadline := time.Now().Add(60 * time.Second)
	for counter(g.m.EventsInserted) < float64(b.N) && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	b.StopTimer()
	mu.Lock()
	defer mu.Unlock()
	if len(delays) != b.N {
		b.Fatalf("%d events stored, want %d", len(delays), b.N)
	}
	slices.Sort(delays)
	b.ReportMetric(float64(delays[len(delays)/2].Milliseconds()), "p50-ms")
	b.ReportMetric(float64(delays[len(delays)*99/100].Milliseconds()), "p99-ms")
	b.ReportMetric(float64(delays[len(delays)-1].Milliseconds()), "max-ms")
}
