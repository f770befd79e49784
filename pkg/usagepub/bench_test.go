package usagepub

import (
	"log/slog"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"

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

// BenchmarkPaced measures CPU per event (user + system of the whole
// process: the publisher and the embedded NATS server storing the events)
// at a steady 3,000 events/s, the rate of a replica at saturation in
// drover-bench on the 2-core machine, from 16 goroutines, for each batch
// linger: what publishing costs per event at a realistic batch size rather
// than at full batches.
func BenchmarkPaced(b *testing.B) {
	for _, linger := range []time.Duration{5 * time.Millisecond, 20 * time.Millisecond, 50 * time.Millisecond} {
		b.Run("linger="+linger.String(), func(b *testing.B) {
			srv := natstest.Start(b)
			p := newPub(b, connect(b, srv.URL()), b.TempDir(), WithBatch(500, linger))
			const rate, workers = 3000, 16
			ev := event("")
			b.ResetTimer()
			cpu0 := processCPU()
			start := time.Now()
			var next atomic.Int64
			var wg sync.WaitGroup
			for w := 0; w < workers; w++ {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for {
						i := next.Add(1) - 1
						if i >= int64(b.N) {
							return
						}
						if d := time.Until(start.Add(time.Duration(i) * time.Second / rate)); d > 0 {
							time.Sleep(d)
						}
						e := ev
						e.ID = usage.NewID()
						p.Record(e)
					}
				}()
			}
			wg.Wait()
			waitDrained(b, p, time.Minute)
			cpu := processCPU() - cpu0
			b.StopTimer()
			b.ReportMetric(float64(cpu.Microseconds())/float64(b.N), "cpu-µs/event")
			var m dto.Metric
			if err := p.m.batchSize.Write(&m); err == nil && m.GetHistogram().GetSampleCount() > 0 {
				h := m.GetHistogram()
				b.ReportMetric(h.GetSampleSum()/float64(h.GetSampleCount()), "events/batch")
			}
			closePub(b, p)
		})
	}
}

// processCPU is the process's user + system CPU time so far.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
