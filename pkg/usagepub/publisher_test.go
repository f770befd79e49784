package usagepub

import (
	"bytes"
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/droverhq/drover/pkg/usage"
	"github.com/droverhq/drover/testkit/natstest"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

func record(p *Publisher, sent *ids) {
	id := usage.NewID()
	sent.add(id)
	p.Record(event(id))
}

func TestPublishManyFromManyGoroutinesExactlyOnce(t *testing.T) {
	for name, opts := range map[string][]Option{"fast batches": nil, "per-message acks": {WithPerMessageAcks()}} {
		t.Run(name, func(t *testing.T) { publishMany(t, opts...) })
	}
}

func publishMany(t *testing.T, opts ...Option) {
	srv := natstest.Start(t)
	nc := connect(t, srv.URL())
	reg := prometheus.NewRegistry()
	p := newPub(t, nc, t.TempDir(), append(opts, WithRegisterer(reg))...)
	sent := newIDs()
	const goroutines, per = 50, 1000
	var wg sync.WaitGroup
	for g := 0; g < goroutines; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < per; i++ {
				record(p, sent)
			}
		}()
	}
	wg.Wait()
	// Generous: on a loaded machine JetStream's acks time out, batches wait
	// in the spool and go again (counted as replayed).
	waitDrained(t, p, 2*time.Minute)
	batches, events := histogram(t, reg, "drover_usage_publish_batch_events")
	closePub(t, p)
	st := p.Stats()
	if st.Published+st.Spooled != goroutines*per || st.Dropped != 0 {
		t.Fatalf("stats %+v: want %d published or spooled", st, goroutines*per)
	}
	t.Logf("%.0f events in %.0f batches", events, batches)
	if events < float64(st.Published) || batches >= events/10 {
		t.Errorf("%.0f events in %.0f batches: want the published events in batches of more than 10", events, batches)
	}
	checkExactlyOnce(t, srv.URL(), sent)
}

// A stream that stops taking fast batches (an operator turned
// allow_batched off, or an older server) refuses the next batch; the
// publisher re-sends that batch at once with one ack per event and stays in
// that mode. Nothing goes to the spool, nothing is lost or doubled.
func TestFallsBackToPerMessageAcksWhenBatchesAreRefused(t *testing.T) {
	srv := natstest.Start(t)
	nc := connect(t, srv.URL())
	var logs syncBuffer
	p := newPub(t, nc, t.TempDir(), WithLogger(slog.New(slog.NewTextHandler(&logs, nil))))
	sent := newIDs()
	for i := 0; i < 100; i++ {
		record(p, sent)
	}
	waitDrained(t, p, 10*time.Second)

	js, _ := jetstream.New(nc)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := js.Stream(ctx, testStream)
	if err != nil {
		t.Fatal(err)
	}
	cfg := s.CachedInfo().Config
	cfg.AllowBatchPublish = false
	if _, err := js.UpdateStream(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 2000; i++ {
		record(p, sent)
	}
	waitDrained(t, p, 30*time.Second)
	closePub(t, p)
	st := p.Stats()
	if st.Published != 2100 || st.Spooled != 0 || st.Dropped != 0 {
		t.Fatalf("stats %+v: want all 2100 published, none spooled", st)
	}
	if n := strings.Count(logs.String(), "does not take fast batches"); n != 1 {
		t.Fatalf("switched to per-message acks %d times, want once:\n%s", n, logs.String())
	}
	checkExactlyOnce(t, srv.URL(), sent)
}

// syncBuffer is a bytes.Buffer for a logger shared with the publisher.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func histogram(t *testing.T, reg *prometheus.Registry, name string) (count, sum float64) {
	t.Helper()
	h := gather(t, reg, name).GetHistogram()
	return float64(h.GetSampleCount()), h.GetSampleSum()
}

// recorder calls Record from many goroutines until stopped.
type recorder struct {
	p    *Publisher
	sent *ids
	stop chan struct{}
	wg   sync.WaitGroup
	// closing is set just before Close; late counts Records that returned
	// after it was set (a superset of those that ran after Close began).
	closing atomic.Bool
	late    atomic.Uint64
}

func startRecorder(p *Publisher, sent *ids, goroutines int) *recorder {
	r := &recorder{p: p, sent: sent, stop: make(chan struct{})}
	for g := 0; g < goroutines; g++ {
		r.wg.Add(1)
		go func() {
			defer r.wg.Done()
			for {
				select {
				case <-r.stop:
					return
				default:
				}
				id := usage.NewID()
				sent.add(id)
				p.Record(event(id))
				// Counted once it returns: a Record that read the flag
				// before Close began may still run after it.
				if r.closing.Load() {
					r.late.Add(1)
				}
				// Pace each caller like a stream of requests (not waiting
				// for anything).
				time.Sleep(100 * time.Microsecond)
			}
		}()
	}
	return r
}

func (r *recorder) halt() {
	close(r.stop)
	r.wg.Wait()
}

func counterValue(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	m := gather(t, reg, name)
	if m.Counter != nil {
		return m.Counter.GetValue()
	}
	return m.Gauge.GetValue()
}

// gather returns the first (unlabelled) series of metric name.
func gather(t *testing.T, reg *prometheus.Registry, name string) *dto.Metric {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			return mf.GetMetric()[0]
		}
	}
	t.Fatalf("metric %s not registered", name)
	return nil
}

// Events recorded before, during and after a NATS outage are all stored
// once: spooled while NATS is away, replayed when it is back. How long
// Record takes meanwhile is BenchmarkRecordThroughOutage's to measure.
func TestNATSStoppedMidRunThenRestarted(t *testing.T) {
	srv := natstest.Start(t)
	nc := connect(t, srv.URL())
	reg := prometheus.NewRegistry()
	p := newPub(t, nc, t.TempDir(), WithRegisterer(reg))
	sent := newIDs()
	r := startRecorder(p, sent, 16)

	waitFor(t, 10*time.Second, "events to be published", func() bool { return p.Stats().Published > 0 })
	srv.Stop()
	waitFor(t, 10*time.Second, "the publisher to spool", func() bool {
		st := p.Stats()
		return !st.NATSConnected && !st.Publishing && st.SpooledPending > 0
	})
	spooledWhileDown := p.Stats().Spooled
	srv.Restart()
	// Recording goes on while the spool is replayed.
	waitFor(t, 10*time.Second, "replay to begin", func() bool {
		st := p.Stats()
		return st.Publishing && st.Replayed > 0
	})
	r.halt()
	t.Logf("recorded %d events, %d spooled while NATS was down", sent.len(), spooledWhileDown)

	waitDrained(t, p, 30*time.Second)
	st := p.Stats()
	t.Logf("stats %+v", st)
	if st.Spooled == 0 || st.Replayed != st.Spooled || st.Dropped != 0 {
		t.Fatalf("stats %+v: want spooled events all replayed", st)
	}
	if got := counterValue(t, reg, "drover_usage_events_spooled_total"); got != float64(st.Spooled) {
		t.Fatalf("spooled metric %v, stats %d", got, st.Spooled)
	}
	if got := counterValue(t, reg, "drover_usage_events_replayed_total"); got != float64(st.Replayed) {
		t.Fatalf("replayed metric %v, stats %d", got, st.Replayed)
	}
	if got := counterValue(t, reg, "drover_usage_spool_pending_events"); got != 0 {
		t.Fatalf("spool pending metric %v", got)
	}
	closePub(t, p)
	checkExactlyOnce(t, srv.URL(), sent)
}

func TestNATSDownAtStartUp(t *testing.T) {
	srv := natstest.Start(t)
	srv.Stop()
	nc := connect(t, srv.URL())
	p := newPub(t, nc, t.TempDir())
	sent := newIDs()
	for i := 0; i < 2000; i++ {
		record(p, sent)
	}
	waitFor(t, 5*time.Second, "2000 events spooled", func() bool { return p.Stats().Spooled >= 2000 })
	srv.Restart()
	waitDrained(t, p, 30*time.Second)
	if st := p.Stats(); st.Replayed != 2000 || !st.StreamReady {
		t.Fatalf("stats %+v", st)
	}
	closePub(t, p)
	checkExactlyOnce(t, srv.URL(), sent)
}

func TestSpoolFullDropsExactlyWhatDoesNotFit(t *testing.T) {
	srv := natstest.Start(t)
	srv.Stop()
	nc := connect(t, srv.URL())
	// Every event encodes to the same size (fixed time, fixed-length ids).
	ev := event(usage.NewID())
	ev.Schema = usage.SchemaVersion
	frame := int64(8 + len(encodeRecord(nil, &ev)))
	const fit, total = 25, 100
	dir := t.TempDir()
	p := newPub(t, nc, dir, WithSpool(dir, fit*frame+frame/2))
	sent := newIDs()
	for i := 0; i < total; i++ {
		record(p, sent)
	}
	closePub(t, p)
	st := p.Stats()
	if st.Dropped != total-fit || st.Spooled != fit || st.Published != 0 {
		t.Fatalf("stats %+v: want %d spooled, %d dropped", st, fit, total-fit)
	}

	srv.Restart()
	p2 := newPub(t, nc, dir, WithSpool(dir, fit*frame+frame/2))
	waitDrained(t, p2, 30*time.Second)
	closePub(t, p2)
	got := streamIDs(t, srv.URL())
	if len(got) != fit {
		t.Fatalf("stream holds %d events, want %d", len(got), fit)
	}
	for id, n := range got {
		if n != 1 || !sent.set[id] {
			t.Fatalf("id %s: %d times, sent %v", id, n, sent.set[id])
		}
	}
}

// spoolOffline records n events with NATS down and closes, leaving them in
// dir's spool.
func spoolOffline(t *testing.T, url, dir string, n int) *ids {
	t.Helper()
	nc := connect(t, url)
	p := newPub(t, nc, dir)
	sent := newIDs()
	for i := 0; i < n; i++ {
		record(p, sent)
	}
	closePub(t, p)
	if st := p.Stats(); st.Spooled != uint64(n) {
		t.Fatalf("stats %+v: want %d spooled", st, n)
	}
	nc.Close()
	return sent
}

func TestCrashDuringReplayResendsAndStreamDeduplicates(t *testing.T) {
	srv := natstest.Start(t)
	srv.Stop()
	dir := t.TempDir()
	sent := spoolOffline(t, srv.URL(), dir, 5000)
	// The ack file as it was before any replay, to put back later: as if
	// replay had crashed before acknowledging anything.
	before, err := os.ReadFile(filepath.Join(dir, "ack"))
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}

	srv.Restart()
	nc := connect(t, srv.URL())
	small := func(o *options) { o.batchSize = 100 }
	p := newPub(t, nc, dir, small)
	waitFor(t, 30*time.Second, "1000 events replayed", func() bool { return p.Stats().Replayed >= 1000 })
	closePub(t, p) // replay stopped midway
	mid := p.Stats()
	t.Logf("first replay stopped after %d of 5000", mid.Replayed)

	if before != nil {
		os.WriteFile(filepath.Join(dir, "ack"), before, 0o644)
	} else {
		os.Remove(filepath.Join(dir, "ack"))
	}
	p = newPub(t, nc, dir, small)
	waitDrained(t, p, 30*time.Second)
	closePub(t, p)
	st := p.Stats()
	// Segments already deleted cannot be re-sent; what is left is re-sent
	// from the start, duplicates included.
	if st.Replayed+mid.Replayed < 5000 {
		t.Fatalf("replayed %d + %d, want at least 5000", mid.Replayed, st.Replayed)
	}
	checkExactlyOnce(t, srv.URL(), sent)
}

func TestTornSpoolRecordIsSkipped(t *testing.T) {
	srv := natstest.Start(t)
	srv.Stop()
	dir := t.TempDir()
	sent := spoolOffline(t, srv.URL(), dir, 300)
	segs, _ := filepath.Glob(filepath.Join(dir, "*.seg"))
	sort.Strings(segs)
	var last string
	for _, s := range segs {
		if fi, _ := os.Stat(s); fi.Size() > 0 {
			last = s
		}
	}
	f, err := os.OpenFile(last, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.Write([]byte{0, 0, 1, 0, 0xde, 0xad, 'p', 'a', 'r'}) // a record cut short
	f.Close()

	srv.Restart()
	p := newPub(t, connect(t, srv.URL()), dir)
	waitDrained(t, p, 30*time.Second)
	closePub(t, p)
	if st := p.Stats(); st.Replayed != 300 {
		t.Fatalf("stats %+v", st)
	}
	checkExactlyOnce(t, srv.URL(), sent)
}

func TestCloseUnderLoadLosesNothing(t *testing.T) {
	srv := natstest.Start(t)
	nc := connect(t, srv.URL())
	dir := t.TempDir()
	p := newPub(t, nc, dir)
	sent := newIDs()
	r := startRecorder(p, sent, 16)
	waitFor(t, 10*time.Second, "events to be published", func() bool { return p.Stats().Published > 1000 })
	// Take NATS away too, so that Close has unsent events to leave in the
	// spool and pending acks that fail.
	srv.Stop()
	// Close while Record is still being called from 16 goroutines.
	r.closing.Store(true)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	if err := p.Close(ctx); err != nil {
		t.Fatal(err)
	}
	cancel()
	r.halt()
	st := p.Stats()
	t.Logf("first publisher: %+v; %d Records began after Close", st, r.late.Load())
	// What NATS did not take stays in the spool (QueueDepth) for the next
	// start; nothing is left in flight.
	if st.PendingAcks != 0 || uint64(st.QueueDepth) != st.SpooledPending {
		t.Fatalf("left behind: %+v", st)
	}
	// Only Records that began after Close may be dropped (Close stops
	// accepting); every event is accounted for.
	if st.Dropped > r.late.Load() || st.Published+st.Spooled+st.Dropped != uint64(sent.len()) {
		t.Fatalf("published %d + spooled %d + dropped %d != recorded %d",
			st.Published, st.Spooled, st.Dropped, sent.len())
	}

	srv.Restart()
	p2 := newPub(t, nc, dir)
	waitDrained(t, p2, 30*time.Second)
	closePub(t, p2)
	got := streamIDs(t, srv.URL())
	for id, n := range got {
		if n != 1 || !sent.set[id] {
			t.Fatalf("id %s: stored %d times", id, n)
		}
	}
	if uint64(len(got))+st.Dropped != uint64(sent.len()) {
		t.Fatalf("stream %d + dropped after close %d != recorded %d", len(got), st.Dropped, sent.len())
	}
}

func TestTwoPublishersCannotShareASpool(t *testing.T) {
	srv := natstest.Start(t)
	nc := connect(t, srv.URL())
	dir := t.TempDir()
	p := newPub(t, nc, dir)
	defer closePub(t, p)
	if _, err := New(nc, WithSpool(dir, 1<<20)); err == nil {
		t.Fatal("second publisher on the same spool dir started")
	}
}
