package usagepub

import (
	"testing"
	"time"

	"github.com/droverhq/drover/testkit/natstest"
	"github.com/droverhq/drover/pkg/usage"
)

// BenchmarkRecord measures the request path's cost: encode and enqueue,
// from parallel goroutines, with a live NATS behind.
func BenchmarkRecord(b *testing.B) {
	srv := natstest.Start(b)
	p := newPub(b, connect(b, srv.URL()), b.TempDir(), WithQueueSize(1<<20))
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
	p := newPub(b, connect(b, srv.URL()), b.TempDir(), WithQueueSize(1<<20))
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
	p := newPub(b, nc, dir, WithQueueSize(1<<20))
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
