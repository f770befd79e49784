package live

import (
	"context"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/droverhq/drover/pkg/config"
	"github.com/droverhq/drover/pkg/natsconn"
	"github.com/droverhq/drover/pkg/usage"
	"github.com/droverhq/drover/pkg/usagepub"
	"github.com/droverhq/drover/testkit/natstest"
)

// liveTuned is p.live with the fleet totals' limits adjusted.
func (p *pipeline) liveTuned(tune func(*fleetTotals)) *Live {
	l := New(Options{Local: (&counter{}).InFlight, Store: p.store, Conn: p.nc, Partitions: testPartitions, tune: tune})
	p.t.Cleanup(l.Close)
	return l
}

// consumers is how many consumers the usage stream has.
func (p *pipeline) consumers() int {
	p.t.Helper()
	s, err := p.js.Stream(context.Background(), "USAGE")
	if err != nil {
		p.t.Fatal(err)
	}
	info, err := s.Info(context.Background())
	if err != nil {
		p.t.Fatal(err)
	}
	return info.State.Consumers
}

// The totals are exact while everything moves at once: four publishers (one
// per partition), an aggregator storing part of what is published every
// few milliseconds, and the proxy reading its baseline in the middle of
// it. No gap is seen (one build), and the proxy never makes a consumer.
func TestFleetTotalsExactWhileEverythingMoves(t *testing.T) {
	p := newPipeline(t)
	p.publish(40)
	p.commit(0.5)

	stop := make(chan struct{})
	var aggregator, watcher sync.WaitGroup
	aggregator.Add(1)
	go func() {
		defer aggregator.Done()
		for {
			select {
			case <-stop:
				return
			case <-time.After(20 * time.Millisecond):
				p.commit(0.7)
			}
		}
	}()
	var mostConsumers int
	watcher.Add(1)
	go func() {
		defer watcher.Done()
		for {
			mostConsumers = max(mostConsumers, p.consumers())
			select {
			case <-stop:
				return
			case <-time.After(10 * time.Millisecond):
			}
		}
	}()
	var publishers sync.WaitGroup
	for part := range testPartitions {
		publishers.Add(1)
		go func() {
			defer publishers.Done()
			p.publishOn(part, 150)
		}()
	}
	l := p.live() // its baseline is read while the publishers and the aggregator run
	publishers.Wait()
	p.exact(l)
	close(stop)
	aggregator.Wait()
	watcher.Wait()

	if builds, _ := l.fleet.stats(); builds != 1 {
		t.Fatalf("%d builds, want 1: no gap happened", builds)
	}
	if n := max(mostConsumers, p.consumers()); n != 0 {
		t.Fatalf("the usage stream had %d consumers while the proxy followed it, want 0", n)
	}
	p.mu.Lock()
	published := len(p.rows)
	p.mu.Unlock()
	stored, _, err := p.store.EventCounts(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if stored == 0 || stored >= uint64(published) {
		t.Fatalf("%d of %d events in ClickHouse: the test needs the aggregator part of the way", stored, published)
	}
	t.Logf("%d events published, %d stored by the aggregator when the totals were exact", published, stored)
}

// A gap in what the subscription received (events stored without being
// republished, or published while the proxy was reconnecting) is seen and
// the totals are built again, exact; meanwhile the previous ones are shown.
func TestFleetTotalsRebuildAfterGap(t *testing.T) {
	// unrepublished publishes with republishing off: the proxy never sees
	// those events.
	unrepublished := func(p *pipeline, publish func()) {
		ctx := context.Background()
		s, err := p.js.Stream(ctx, "USAGE")
		if err != nil {
			t.Fatal(err)
		}
		cfg := s.CachedInfo().Config
		cfg.RePublish = nil
		if _, err := p.js.UpdateStream(ctx, cfg); err != nil {
			t.Fatal(err)
		}
		publish()
		if _, err := usage.EnsureStream(ctx, p.js, usage.StreamConfig{Name: "USAGE", DuplicateWindow: time.Minute}); err != nil {
			t.Fatal(err)
		}
	}
	for _, tc := range []struct {
		name  string
		fault func(p *pipeline)
		then  func(p *pipeline) // publishing after the fault
	}{
		{"events stored without republishing", func(p *pipeline) {
			unrepublished(p, func() { p.publish(40) })
		}, func(p *pipeline) { p.publish(40) }},
		// Partition 0 stays quiet after losing its event: the jump in the
		// stream's sequences gives the gap away.
		{"an event lost on a partition that stays quiet", func(p *pipeline) {
			unrepublished(p, func() { p.publishOn(0, 1) })
		}, func(p *pipeline) { p.publishOn(1, 10) }},
		{"NATS restarts", func(p *pipeline) {
			p.ns.Restart()
			waitFor(t, "NATS to be back", func() bool {
				_, err := p.js.Stream(context.Background(), "USAGE")
				return err == nil
			})
		}, func(p *pipeline) { p.publish(40) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := newPipeline(t)
			p.publish(40)
			p.commit(0.5)
			l := p.live()
			p.exact(l)
			before, _ := l.fleet.stats()

			tc.fault(p)
			tc.then(p)
			waitFor(t, "the previous totals to be shown while rebuilding", func() bool {
				s := l.Snapshot()
				return s.Tokens.Mode == ModeFleet && strings.Contains(s.Tokens.Reason, "rebuilding") && strings.Contains(s.Tokens.Reason, "gap")
			})
			p.exact(l)
			if after, _ := l.fleet.stats(); after <= before {
				t.Fatalf("%d builds after the fault, %d before: the gap went unseen", after, before)
			}
			if n := p.consumers(); n != 0 {
				t.Fatalf("the usage stream has %d consumers, want 0", n)
			}
		})
	}
}

// With the aggregator down (ClickHouse far behind the stream) the fleet's
// totals are not ready: the snapshot says why and shows this replica's.
// Once the aggregator has stored the backlog they are ready and exact.
func TestFleetTotalsWaitForTheAggregator(t *testing.T) {
	p := newPipeline(t)
	p.publish(30)
	p.commit(0.1)
	l := p.liveTuned(func(f *fleetTotals) { f.maxFill = 10 })
	waitFor(t, "the lag to be reported", func() bool {
		s := l.Snapshot()
		return s.Tokens.Mode == ModeLocal && strings.Contains(s.Tokens.Reason, "is the aggregator running?")
	})
	p.commit(1)
	p.exact(l)
}

// Messages on usage.live that the stream did not republish (no stream
// headers) neither count nor force a rebuild.
func TestFleetTotalsIgnoreForeignMessages(t *testing.T) {
	p := newPipeline(t)
	p.publish(10)
	l := p.live()
	p.exact(l)
	if err := p.nc.Publish("usage.live.1", []byte(`{"schema":"usage.v1","id":"forged","endpoint":"a","model":"tiny","input_tokens":1000000}`)); err != nil {
		t.Fatal(err)
	}
	p.publish(10) // arrives after the forged message
	p.exact(l)
	if builds, _ := l.fleet.stats(); builds != 1 {
		t.Fatalf("%d builds, want 1", builds)
	}
}

// With the shipped NATS config (deploy/nats/nats.conf) the proxy's user,
// which may not create consumers on the usage stream, follows the
// fleet's totals exactly: the subscription, the message gets and the
// stream info it needs are all it is allowed.
func TestFleetTotalsWithShippedPermissions(t *testing.T) {
	ns := natstest.StartShipped(t)
	owner, err := nats.Connect(ns.URL(), nats.UserInfo("aggregator", natstest.AggregatorPassword),
		nats.CustomInboxPrefix(natsconn.InboxPrefix("drover-aggregator")))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(owner.Close)
	proxy, err := natsconn.Connect(config.NATS{URL: ns.URL(), User: "proxy", Password: natstest.ProxyPassword}, "drover-proxy", slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(proxy.Close)
	p := newPipelineOn(t, ns, owner, proxy)
	p.publish(40)
	p.commit(0.5)
	l := p.live()
	p.exact(l)
	p.publish(20)
	p.exact(l)
	if n := p.consumers(); n != 0 {
		t.Fatalf("the usage stream has %d consumers, want 0", n)
	}
}

// Events the proxies' publisher sends in fast batches are republished one
// by one, in order: followed without a gap (one build), exact.
func TestFleetTotalsFollowBatchPublishing(t *testing.T) {
	p := newPipeline(t)
	p.publish(20)
	p.commit(0.5)
	l := p.live()
	p.exact(l)
	pub, err := usagepub.New(p.nc, usagepub.WithStream(usage.StreamConfig{Name: "USAGE"}), usagepub.WithPartitions(testPartitions),
		usagepub.WithSpool(t.TempDir(), 0), usagepub.WithBatch(50, 5*time.Millisecond), usagepub.WithLogger(slog.New(slog.DiscardHandler)))
	if err != nil {
		t.Fatal(err)
	}
	for i := range 500 {
		ev := usage.Event{Schema: usage.SchemaVersion, ID: usage.NewID(), Time: time.Now().UTC(), Endpoint: "b", Model: "tiny",
			APIKey: []string{"team-a", "team-b"}[i%2], Route: "/api/chat", Status: 200,
			InputTokens: usage.Int64(int64(i)), OutputTokens: usage.Int64(1)}
		pub.Record(ev)
		p.mu.Lock()
		k := tokenKey{ev.Endpoint, ev.Model, ev.APIKey}
		c := p.want[k]
		c.Add(ev.Count())
		p.want[k] = c
		p.mu.Unlock()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := pub.Close(ctx); err != nil {
		t.Fatal(err)
	}
	p.exact(l)
	if builds, _ := l.fleet.stats(); builds != 1 {
		t.Fatalf("%d builds, want 1: no gap happened", builds)
	}
}
