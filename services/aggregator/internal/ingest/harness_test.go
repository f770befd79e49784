package ingest_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/goleak"

	"github.com/droverhq/drover/pkg/chstore"
	"github.com/droverhq/drover/pkg/usage"
	"github.com/droverhq/drover/services/aggregator/internal/ingest"
	"github.com/droverhq/drover/services/aggregator/internal/lease"
	"github.com/droverhq/drover/services/aggregator/internal/metrics"
	"github.com/droverhq/drover/testkit/chtest"
	"github.com/droverhq/drover/testkit/natstest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

const (
	streamName = "USAGE"
	partitions = 8
	bucket     = "drover_aggregator_test"
	// testLeaseTTL is short so that a crashed instance's partitions move quickly.
	testLeaseTTL = 2 * time.Second
)

// env is one NATS server, one ClickHouse server and the expected totals of
// everything published so far.
type env struct {
	t     testing.TB
	nats  *natstest.Server
	ch    *chtest.Server
	store *chstore.Store
	nc    *nats.Conn
	js    jetstream.JetStream

	mu       sync.Mutex // guards expected and count
	expected map[key]sums
	count    int
}

type key struct {
	minute                  time.Time
	endpoint, model, apiKey string
}

type sums struct{ requests, errors, in, out, total, unknown uint64 }

func newEnv(t testing.TB) *env {
	t.Helper()
	e := &env{t: t, nats: natstest.Start(t), ch: chtest.Start(t), expected: map[key]sums{}}
	store, err := chstore.Open(chstore.Options{Addr: e.ch.Addr(), Database: "drover", ReadTimeout: 10 * time.Second, DialTimeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })
	e.store = store
	ctx := context.Background()
	if _, err := store.Migrate(ctx); err != nil {
		t.Fatalf("migrate: %v\n%s", err, e.ch.LogTail())
	}
	e.nc, e.js = e.connect()
	if _, err := usage.EnsureStream(ctx, e.js, usage.StreamConfig{Name: streamName, MaxAge: time.Hour, MaxBytes: 1 << 30, DuplicateWindow: 10 * time.Minute}); err != nil {
		t.Fatal(err)
	}
	return e
}

func (e *env) connect() (*nats.Conn, jetstream.JetStream) {
	e.t.Helper()
	nc, err := nats.Connect(e.nats.URL(), nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond))
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(nc.Close)
	js, err := jetstream.New(nc, jetstream.WithPublishAsyncMaxPending(65536))
	if err != nil {
		e.t.Fatal(err)
	}
	return nc, js
}

var (
	endpoints = []string{"gpu-a:11434", "gpu-b:11434", "gpu-c:11434"}
	models    = []string{"llama3.2:3b", "qwen2.5:7b", "nomic-embed-text:latest", "mistral:7b-instruct-v0.3-q4_K_M"}
	apiKeys   = []string{"team-a", "team-b", "anonymous"}
)

// event makes a random event at t and records it as expected.
func (e *env) event(r *rand.Rand, t time.Time) usage.Event {
	ev := usage.Event{
		Schema: usage.SchemaVersion, ID: usage.NewID(), Time: t.UTC(), Replica: "proxy-1",
		Endpoint: endpoints[r.IntN(len(endpoints))], Model: models[r.IntN(len(models))], APIKey: apiKeys[r.IntN(len(apiKeys))],
		Route: "/api/chat", Status: 200, Stream: true, TTFBMs: 5, DurationMs: 50, Attempts: 1,
	}
	if r.IntN(20) == 0 {
		ev.Error, ev.Status = true, 502
	}
	if r.IntN(10) != 0 {
		ev.InputTokens, ev.OutputTokens = usage.Int64(r.Int64N(4000)), usage.Int64(r.Int64N(2000))
	}
	return ev
}

// expect records ev as published once.
func (e *env) expect(ev usage.Event) {
	in, out, known := ev.Tokens()
	k := key{ev.Time.UTC().Truncate(time.Minute), ev.Endpoint, ev.Model, ev.APIKey}
	e.mu.Lock()
	s := e.expected[k]
	s.requests++
	if ev.Error {
		s.errors++
	}
	s.in += uint64(in)
	s.out += uint64(out)
	s.total += uint64(in + out)
	if !known {
		s.unknown++
	}
	e.expected[k] = s
	e.count++
	e.mu.Unlock()
}

// publish sends n random events spread over the last few minutes and waits
// for JetStream to store them. Each is recorded as expected.
func (e *env) publish(n int, seed uint64) {
	e.t.Helper()
	r := rand.New(rand.NewPCG(seed, 7))
	base := time.Now().Add(-5 * time.Minute)
	evs := make([]usage.Event, n)
	for i := range evs {
		evs[i] = e.event(r, base.Add(time.Duration(r.IntN(300_000))*time.Millisecond))
	}
	e.publishEvents(e.js, evs)
}

func (e *env) publishEvents(js jetstream.JetStream, evs []usage.Event) {
	e.t.Helper()
	for start := 0; start < len(evs); start += 5000 {
		end := min(start+5000, len(evs))
		var futures []jetstream.PubAckFuture
		for _, ev := range evs[start:end] {
			f, err := js.PublishMsgAsync(eventMsg(ev))
			if err != nil {
				e.t.Fatalf("publish: %v", err)
			}
			futures = append(futures, f)
		}
		select {
		case <-js.PublishAsyncComplete():
		case <-time.After(30 * time.Second):
			e.t.Fatal("publishes not acknowledged in 30s")
		}
		for i, f := range futures {
			select {
			case <-f.Ok():
			case err := <-f.Err():
				e.t.Fatalf("publish %d: %v", start+i, err)
			}
		}
		for _, ev := range evs[start:end] {
			e.expect(ev)
		}
	}
}

func eventMsg(ev usage.Event) *nats.Msg {
	b, err := jsonMarshal(ev)
	if err != nil {
		panic(err)
	}
	m := nats.NewMsg(usage.Subject(ev.ID, partitions))
	m.Data = b
	m.Header.Set(jetstream.MsgIDHeader, ev.ID)
	return m
}

// actual reads token_usage_minute grouped like expected.
func (e *env) actual(ctx context.Context) (map[key]sums, error) {
	rows, err := e.store.Usage(ctx, chstore.UsageQuery{Bucket: time.Minute,
		GroupBy: []chstore.Dimension{chstore.ByEndpoint, chstore.ByModel, chstore.ByAPIKey}})
	if err != nil {
		return nil, err
	}
	got := map[key]sums{}
	for _, r := range rows {
		got[key{r.Bucket, r.Endpoint, r.Model, r.APIKey}] = sums{r.Requests, r.Errors, r.InputTokens, r.OutputTokens, r.TotalTokens, r.TokensUnknown}
	}
	return got, nil
}

// waitExact waits until ClickHouse's totals equal what was published, then
// until the consumers have settled, checks that they are still equal
// (nothing late arrives twice) and that the raw table holds each event
// exactly once.
func (e *env) waitExact(timeout time.Duration) {
	e.t.Helper()
	deadline := time.Now().Add(timeout)
	var got map[key]sums
	var err error
	for time.Now().Before(deadline) {
		got, err = e.actual(context.Background())
		if err == nil && e.equal(got) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil || !e.equal(got) {
		e.t.Fatalf("totals never matched: %s (err %v)", e.diff(got), err)
	}
	// Once every consumer has nothing left to deliver or to acknowledge,
	// nothing more can be inserted: the totals must still match then.
	for !e.settled() {
		if time.Now().After(deadline) {
			e.t.Fatal("consumers never settled: messages still pending or unacknowledged")
		}
		time.Sleep(50 * time.Millisecond)
	}
	got, err = e.actual(context.Background())
	if err != nil || !e.equal(got) {
		e.t.Fatalf("totals changed after matching: %s (err %v)", e.diff(got), err)
	}
	e.mu.Lock()
	want := e.count
	e.mu.Unlock()
	total, distinct := e.rawCounts()
	if total != uint64(want) || distinct != uint64(want) {
		e.t.Fatalf("usage_events has %d rows, %d distinct ids; want %d", total, distinct, want)
	}
}

func (e *env) rawCounts() (total, distinct uint64) {
	e.t.Helper()
	total, distinct, err := e.store.EventCounts(context.Background())
	if err != nil {
		e.t.Fatal(err)
	}
	return total, distinct
}

func (e *env) equal(got map[key]sums) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	if len(got) != len(e.expected) {
		return false
	}
	for k, w := range e.expected {
		if got[k] != w {
			return false
		}
	}
	return true
}

func (e *env) diff(got map[key]sums) string {
	e.mu.Lock()
	defer e.mu.Unlock()
	var wantReq, gotReq uint64
	var wantTok, gotTok uint64
	for _, s := range e.expected {
		wantReq += s.requests
		wantTok += s.total
	}
	for _, s := range got {
		gotReq += s.requests
		gotTok += s.total
	}
	bad := 0
	example := ""
	for k, w := range e.expected {
		if got[k] != w {
			bad++
			if example == "" {
				example = fmt.Sprintf("%v: want %+v got %+v", k, w, got[k])
			}
		}
	}
	return fmt.Sprintf("requests %d/%d, tokens %d/%d, %d of %d groups differ, %d groups present; e.g. %s",
		gotReq, wantReq, gotTok, wantTok, bad, len(e.expected), len(got), example)
}

// agg is one running aggregator with its own NATS connection.
type agg struct {
	a       *ingest.Aggregator
	m       *metrics.Metrics
	nc      *nats.Conn
	cancel  context.CancelFunc
	done    chan error
	stopped bool
}

type aggOption func(*ingest.Options)

func (e *env) startAgg(id string, opts ...aggOption) *agg {
	e.t.Helper()
	nc, js := e.connect()
	ctx := context.Background()
	leases, err := lease.Open(ctx, js, bucket, id, testLeaseTTL, 1)
	if err != nil {
		e.t.Fatal(err)
	}
	m := metrics.New(false)
	o := ingest.Options{
		JS: js, Conn: nc, Store: e.store, Leases: leases, Metrics: m, Logger: testLogger(id),
		Stream: streamName, Partitions: partitions, BatchSize: 5000, FlushInterval: 200 * time.Millisecond,
		FetchBatch: 1000, LeaseTTL: testLeaseTTL, RetryMin: 50 * time.Millisecond, RetryMax: 500 * time.Millisecond,
		ShutdownTimeout: 10 * time.Second,
	}
	for _, f := range opts {
		f(&o)
	}
	a, err := ingest.New(o)
	if err != nil {
		e.t.Fatal(err)
	}
	runCtx, cancel := context.WithCancel(ctx)
	g := &agg{a: a, m: m, nc: nc, cancel: cancel, done: make(chan error, 1)}
	go func() { g.done <- a.Run(runCtx) }()
	e.t.Cleanup(func() { g.stop(e.t) })
	return g
}

// stop is a graceful shutdown (SIGTERM); it returns Run's error.
func (g *agg) stop(t testing.TB) error {
	if g.stopped {
		return nil
	}
	g.stopped = true
	g.cancel()
	select {
	case err := <-g.done:
		return err
	case <-time.After(60 * time.Second):
		t.Fatal("aggregator did not stop within 60s")
		return nil
	}
}

func testLogger(id string) *slog.Logger {
	if os.Getenv("DROVER_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug})).With("instance", id)
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

func counter(c interface{ Write(*dtoMetric) error }) float64 {
	var m dtoMetric
	_ = c.Write(&m)
	if m.Counter != nil {
		return m.Counter.GetValue()
	}
	if m.Gauge != nil {
		return m.Gauge.GetValue()
	}
	return 0
}

// settled reports whether no partition's consumer has messages left to
// deliver or awaiting acknowledgement.
func (e *env) settled() bool {
	e.t.Helper()
	for p := range partitions {
		c, err := e.js.Consumer(context.Background(), streamName, ingest.ConsumerName(p))
		if err != nil {
			continue // not created yet, or none: nothing held
		}
		info, err := c.Info(context.Background())
		if err != nil || info.NumPending+uint64(info.NumAckPending) > 0 {
			return false
		}
	}
	return true
}
