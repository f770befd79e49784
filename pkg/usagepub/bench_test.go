package usagepub

import (
	"log/slog"
	"sync/atomic"
	"testing"
	"time"

	"github.com/droverhq/drover/pkg/usage"
	"github.com/droverhq/drover/testkit/natstest"
)

// BenchmarkRecord measures the request path's cost: encode and enqueue,
// from parallel goroutines, with a live NATS behind.
func BenchmarkRecord(b *testing.B) {
	srv := natstest.Start(b)
	p := newPub(b, connect(b, srv.URL()), b.TempDir())
	ev := event("")
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			e := ev
			e.ID = usage.NewID()
			p.Record(e)
		}
	})
	b.StopTimer()
	closePub(b, p)
}

// BenchmarkPublishEndToEnd measures events/s from Record to JetStream ack.
func BenchmarkPublishEndToEnd(b *testing.B) {
	srv := natstest.Start(b)
	p := newPub(b, connect(b, srv.URL()), b.TempDir())
	ev := event("")
	b.ResetTimer()
	start := time.Now()
	for i := 0; i < b.N; i++ {
		e := ev
		e.ID = usage.NewID()
		p.Record(e)
	}
	waitDrained(b, p, 5*time.Minute)
	el := time.Since(start)
	b.StopTimer()
	st := p.Stats()
	b.ReportMetric(float64(b.N)/el.Seconds(), "events/s")
	b.ReportMetric(float64(st.Spooled), "spooled")
	closePub(b, p)
}

// BenchmarkReplay measures draining a spool written while NATS was down.
func BenchmarkReplay(b *testing.B) {
	srv := natstest.Start(b)
	srv.Stop()
	dir := b.TempDir()
	nc := connect(b, srv.URL())
	p := newPub(b, nc, dir)
	ev := event("")
	for i := 0; i < b.N; i++ {
		e := ev
		e.ID = usage.NewID()
		p.Record(e)
	}
	closePub(b, p)
	srv.Restart()
	b.ResetTimer()
	start := time.Now()
	p = newPub(b, nc, dir)
	waitDrained(b, p, 5*time.Minute)
	el := time.Since(start)
	b.StopTimer()
	b.ReportMetric(float64(b.N)/el.Seconds(), "events/s")
	closePub(b, p)
}

// BenchmarkRecordThroughOutage measures what the request path pays while
// NATS goes away and comes back every 200ms (spooling, then replay beside
// new events): Record from many goroutines, ns/op and the slowest single
// call (max-ns; the proxy's claim is well under 200ms).
func BenchmarkRecordThroughOutage(b *testing.B) {
	srv := natstest.Start(b)
	p := newPub(b, connect(b, srv.URL()), b.TempDir(), WithLogger(slog.New(slog.DiscardHandler)))
	stop, stopped := make(chan struct{}), make(chan struct{})
	var outages atomic.Int64
	go func() {
		defer close(stopped)
		tick := time.NewTicker(200 * time.Millisecond)
		defer tick.Stop()
		down := false
		for {
			select {
			case <-stop:
				if down {
					srv.Restart()
				}
				return
			case <-tick.C:
				if down {
					srv.Restart()
				} else {
					srv.Stop()
					outages.Add(1)
				}
				down = !down
			}
		}
	}()
	ev := event("")
	var worst atomic.Int64
	b.SetParallelism(8)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			e := ev
			e.ID = usage.NewID()
			start := time.Now()
			p.Record(e)
			d := int64(time.Since(start))
			for w := worst.Load(); d > w && !worst.CompareAndSwap(w, d); w = worst.Load() {
			}
		}
	})
	b.StopTimer()
	close(stop)
	<-stopped
	b.ReportMetric(float64(worst.Load()), "max-ns")
	b.ReportMetric(float64(outages.Load()), "outages")
	b.ReportMetric(float64(p.Stats().Spooled)/float64(b.N), "spooled/op")
	closePub(b, p)
}
