package usagepub

import (
	"context"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/droverhq/drover/pkg/config"
	"github.com/droverhq/drover/pkg/natsconn"
	"github.com/droverhq/drover/pkg/usage"
	"github.com/droverhq/drover/testkit/natstest"
)

// With the shipped NATS permissions a proxy may not create the usage
// stream, so its publisher waits for the aggregator's: events spool while
// the stream is missing, which is logged once however often the publisher
// looks again, and go out as soon as the aggregator has created it. Nothing
// the publisher does meets a permission violation.
func TestWaitsForTheAggregatorsStream(t *testing.T) {
	srv := natstest.StartShipped(t)
	var logs syncBuffer
	log := slog.New(slog.NewTextHandler(&logs, nil))
	nc, err := natsconn.Connect(config.NATS{URL: srv.URL(), User: "proxy", Password: natstest.ProxyPassword}, "drover-proxy r1 usage", log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	cfg := usage.StreamConfig{Name: testStream, MaxAge: time.Hour, DuplicateWindow: time.Minute}
	p, err := New(nc, WithStream(cfg), WithSpool(t.TempDir(), 1<<30), WithRetryInterval(20*time.Millisecond), WithLogger(log))
	if err != nil {
		t.Fatal(err)
	}
	defer closePub(t, p)
	sent := newIDs()
	for range 10 {
		record(p, sent)
	}
	waitFor(t, 10*time.Second, "the events to be spooled and the stream looked for 5 times", func() bool {
		return p.Stats().Spooled == 10 && p.streamChecks.Load() >= 5
	})
	if st := p.Stats(); st.StreamReady || st.Publishing || st.Published != 0 {
		t.Fatalf("stream missing, yet the publisher reports %+v", st)
	}
	if n := strings.Count(logs.String(), "usage stream USAGE not found: is the aggregator running?"); n != 1 {
		t.Fatalf("the missing stream was logged %d times after %d looks, want once:\n%s", n, p.streamChecks.Load(), logs.String())
	}

	agg, err := natsconn.Connect(config.NATS{URL: srv.URL(), User: "aggregator", Password: natstest.AggregatorPassword}, "drover-aggregator a1", log)
	if err != nil {
		t.Fatal(err)
	}
	defer agg.Close()
	js, _ := jetstream.New(agg)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := usage.EnsureStream(ctx, js, cfg)
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "the publisher to find the stream", func() bool { return p.Stats().Publishing })
	for range 5 {
		record(p, sent)
	}
	waitDrained(t, p, 10*time.Second)
	info, err := s.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.State.Msgs != 15 {
		t.Fatalf("stream holds %d events, want the 10 spooled and 5 new", info.State.Msgs)
	}
	if st := p.Stats(); st.Replayed != 10 || st.Published != 5 {
		t.Fatalf("replayed %d and published %d, want 10 and 5", st.Replayed, st.Published)
	}
	if strings.Contains(logs.String(), "lacks the permission") {
		t.Fatalf("a permission violation while publishing:\n%s", logs.String())
	}
}
