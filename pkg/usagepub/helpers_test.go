package usagepub

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/droverhq/drover/pkg/usage"
	"github.com/droverhq/drover/testkit/natstest"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const testStream = "USAGE"

// connect dials the way the proxy should: keep trying forever, so that a
// server that is down at start-up or restarts is picked up.
func connect(t testing.TB, url string) *nats.Conn {
	t.Helper()
	nc, err := nats.Connect(url, nats.RetryOnFailedConnect(true), nats.MaxReconnects(-1),
		nats.ReconnectWait(50*time.Millisecond), nats.NoCallbacksAfterClientClose())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	return nc
}

func newPub(t testing.TB, nc *nats.Conn, dir string, opts ...Option) *Publisher {
	t.Helper()
	base := []Option{
		WithStream(usage.StreamConfig{Name: testStream, MaxAge: time.Hour, MaxBytes: 1 << 30, DuplicateWindow: 10 * time.Minute}),
		WithCreateStream(),
		WithSpool(dir, 1<<30),
		WithAckTimeout(time.Second),
		WithRetryInterval(100 * time.Millisecond),
	}
	p, err := New(nc, append(base, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func closePub(t testing.TB, p *Publisher) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := p.Close(ctx); err != nil {
		t.Fatal(err)
	}
}

var fixedTime = time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)

func event(id string) usage.Event {
	return usage.Event{
		ID: id, Time: fixedTime, Endpoint: "gpu-1", Model: "llama3", APIKey: "k1",
		Route: "/api/chat", Status: 200, InputTokens: usage.Int64(10), OutputTokens: usage.Int64(20),
		DurationMs: 12, Attempts: 1,
	}
}

// ids records what was sent, from many goroutines.
type ids struct {
	mu  sync.Mutex
	set map[string]bool
}

func newIDs() *ids { return &ids{set: map[string]bool{}} }

func (s *ids) add(id string) {
	s.mu.Lock()
	s.set[id] = true
	s.mu.Unlock()
}

func (s *ids) len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.set)
}

// streamIDs reads the whole stream and returns how often each
// Nats-Msg-Id occurs in it.
func streamIDs(t testing.TB, url string) map[string]int {
	t.Helper()
	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	s, err := js.Stream(ctx, testStream)
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	want := info.State.Msgs
	c, err := s.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{})
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]int{}
	var n uint64
	for n < want {
		batch, err := c.Fetch(5000, jetstream.FetchMaxWait(2*time.Second))
		if err != nil {
			t.Fatal(err)
		}
		k := 0
		for m := range batch.Messages() {
			got[m.Headers().Get(jetstream.MsgIDHeader)]++
			n++
			k++
		}
		if k == 0 {
			t.Fatalf("stream reports %d messages, read only %d", want, n)
		}
	}
	return got
}

// checkExactlyOnce asserts that the stream holds each of want exactly once
// and nothing else.
func checkExactlyOnce(t testing.TB, url string, want *ids) {
	t.Helper()
	got := streamIDs(t, url)
	for id, n := range got {
		if n != 1 {
			t.Fatalf("id %s stored %d times", id, n)
		}
		if !want.set[id] {
			t.Fatalf("unexpected id %s in stream", id)
		}
	}
	if len(got) != len(want.set) {
		t.Fatalf("stream holds %d events, want %d", len(got), len(want.set))
	}
}

// waitFor polls cond until it holds, failing the test after timeout.
func waitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// waitDrained waits until nothing is queued, unacknowledged or spooled.
func waitDrained(t testing.TB, p *Publisher, timeout time.Duration) {
	t.Helper()
	var st Stats
	waitFor(t, timeout, "the publisher to drain", func() bool {
		st = p.Stats()
		return st.QueueDepth == 0 && st.PendingAcks == 0 && st.SpooledPending == 0 && st.Publishing
	})
}

var _ = natstest.Start
