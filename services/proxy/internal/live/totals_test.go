package live

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/droverhq/drover/pkg/chstore"
	"github.com/droverhq/drover/pkg/usage"
	"github.com/droverhq/drover/testkit/chtest"
	"github.com/droverhq/drover/testkit/natstest"
)

const testPartitions = 4

// pipeline is a real NATS with the usage stream and a real ClickHouse with
// the schema; the test plays the proxy (publishing) and the aggregator
// (inserting rows with their stream sequences).
type pipeline struct {
	t     *testing.T
	ns    *natstest.Server
	nc    *nats.Conn
	js    jetstream.JetStream
	store *chstore.Store

	mu   sync.Mutex         // guards rows and want (publishers and the aggregator run concurrently)
	rows []chstore.EventRow // everything published, in stream order
	want map[tokenKey]usage.Count
}

func newPipeline(t *testing.T) *pipeline {
	t.Helper()
	ns := natstest.Start(t)
	nc, err := nats.Connect(ns.URL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	return newPipelineOn(t, ns, nc, nc)
}

// newPipelineOn makes the usage stream through owner (the aggregator's
// connection); the test publishes, and the proxy follows, through nc.
func newPipelineOn(t *testing.T, ns *natstest.Server, owner, nc *nats.Conn) *pipeline {
	t.Helper()
	ctx := context.Background()
	ch := chtest.Start(t)
	store, err := chstore.Open(chstore.Options{Addr: ch.Addr(), Database: "drover_live"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })
	if _, err := store.Migrate(ctx); err != nil {
		t.Fatal(err)
	}
	ojs, err := jetstream.New(owner)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := usage.EnsureStream(ctx, ojs, usage.StreamConfig{Name: "USAGE", DuplicateWindow: time.Minute}); err != nil {
		t.Fatal(err)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	return &pipeline{t: t, ns: ns, nc: nc, js: js, store: store, want: map[tokenKey]usage.Count{}}
}

// publish sends n events spread over endpoints, models, keys and
// partitions.
func (p *pipeline) publish(n int) { p.publishOn(-1, n) }

// publishOn sends n events to partition part (any with -1). Publishers of
// different partitions may run at once: each partition's rows are recorded
// in stream order, as the aggregator would store them.
func (p *pipeline) publishOn(part, n int) {
	p.t.Helper()
	for i := range n {
		id := usage.NewID()
		for part >= 0 && usage.Partition(id, testPartitions) != part {
			id = usage.NewID()
		}
		ev := usage.Event{
			Schema: usage.SchemaVersion, ID: id, Time: time.Now().UTC(),
			Endpoint: []string{"a", "b"}[i%2], Model: []string{"tiny", "llama3.2:3b"}[i%3%2], APIKey: []string{"team-a", "team-b", "team-c"}[i%3],
			Route: "/api/chat", Status: 200, InputTokens: usage.Int64(int64(10 + i)), OutputTokens: usage.Int64(int64(100 + i)),
		}
		if i%7 == 0 {
			ev.Status, ev.Error, ev.InputTokens, ev.OutputTokens = 502, true, nil, nil
		}
		data, _ := jsonMarshal(ev)
		part := usage.Partition(ev.ID, testPartitions)
		ack, err := p.js.Publish(context.Background(), usage.PartitionSubject(part), data, jetstream.WithMsgID(ev.ID))
		if err != nil {
			p.t.Error(err)
			return
		}
		p.mu.Lock()
		p.rows = append(p.rows, chstore.EventRow{Event: ev, Partition: uint16(part), Seq: ack.Sequence})
		k := tokenKey{ev.Endpoint, ev.Model, ev.APIKey}
		c := p.want[k]
		c.Add(ev.Count())
		p.want[k] = c
		p.mu.Unlock()
	}
}

// publishJunk sends what the aggregator dead-letters: it must not count.
func (p *pipeline) publishJunk() {
	p.t.Helper()
	for _, data := range []string{`{"schema":"usage.v2","id":"x","time":"2024-01-01T00:00:00Z","endpoint":"a","model":"tiny","input_tokens":1000000,"output_tokens":1}`, `not json`} {
		if _, err := p.js.Publish(context.Background(), usage.PartitionSubject(1), []byte(data)); err != nil {
			p.t.Fatal(err)
		}
	}
}

// commit stores, per partition, the first frac of its published events
// not stored yet, as the aggregator would.
func (p *pipeline) commit(frac float64) {
	p.t.Helper()
	ctx := context.Background()
	done, err := p.store.Committed(ctx, []int{0, 1, 2, 3})
	if err != nil {
		p.t.Fatal(err)
	}
	for part := range testPartitions {
		var todo []chstore.EventRow
		p.mu.Lock()
		for _, r := range p.rows {
			if int(r.Partition) == part && r.Seq > done[part] {
				todo = append(todo, r)
			}
		}
		p.mu.Unlock()
		slices.SortFunc(todo, func(a, b chstore.EventRow) int { return cmp.Compare(a.Seq, b.Seq) })
		todo = todo[:int(float64(len(todo))*frac)]
		if err := p.store.InsertEvents(ctx, todo); err != nil {
			p.t.Fatal(err)
		}
	}
}

func (p *pipeline) live() *Live {
	l := New(Options{Local: (&counter{}).InFlight, Store: p.store, Conn: p.nc, Partitions: testPartitions})
	p.t.Cleanup(l.Close)
	return l
}

// exact waits until l's totals equal everything published.
func (p *pipeline) exact(l *Live) {
	p.t.Helper()
	var last string
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		if last = p.diff(l.Snapshot()); last == "" {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	p.t.Fatalf("fleet totals never matched what was published: %s", last)
}

func (p *pipeline) diff(s *Snapshot) string {
	if s.Tokens.Mode != ModeFleet || s.Tokens.Reason != "" {
		return fmt.Sprintf("token source %+v", s.Tokens)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	byEP := map[string]map[string]usage.Count{}
	byKey := map[string]usage.Count{}
	for k, c := range p.want {
		if byEP[k.Endpoint] == nil {
			byEP[k.Endpoint] = map[string]usage.Count{}
		}
		byEP[k.Endpoint][k.Model] = sum(byEP[k.Endpoint][k.Model], c)
		byKey[k.APIKey] = sum(byKey[k.APIKey], c)
	}
	if !equal2(byEP, s.Totals) {
		return fmt.Sprintf("totals %v, want %v", s.Totals, byEP)
	}
	if !equal1(byKey, s.Keys) {
		return fmt.Sprintf("key totals %v, want %v", s.Keys, byKey)
	}
	for ep, models := range byEP {
		for m, c := range models {
			if s.TokenUsageCounts[ep][m] != c.InputTokens+c.OutputTokens {
				return fmt.Sprintf("token_usage_counts[%s][%s] = %d, want %d", ep, m, s.TokenUsageCounts[ep][m], c.InputTokens+c.OutputTokens)
			}
		}
	}
	return ""
}

// Totals are ClickHouse's plus the stream after each partition's committed
// sequence: exact whatever share the aggregator has stored, with the
// stream overlapping ClickHouse, junk in the stream, and events arriving
// after the start.
func TestFleetTotalsAreExact(t *testing.T) {
	p := newPipeline(t)
	p.publish(60)
	p.publishJunk()
	p.commit(0.5) // half of each partition is in ClickHouse, all of it in the stream
	start := time.Now()
	l := p.live()
	p.exact(l)
	ready := time.Since(start)
	if _, filled := l.fleet.stats(); filled == 0 {
		t.Fatal("no event was read from the stream: the test needs ClickHouse behind it")
	} else {
		t.Logf("exact %s after the start, with %d events ClickHouse lacked read from the stream", ready.Round(time.Millisecond), filled)
	}

	p.publish(25) // arrives after the start
	p.exact(l)

	p.commit(0.6) // the aggregator moves on: a fresh baseline cuts elsewhere
	p.publish(5)
	p.exact(p.live())
	p.exact(l)

	p.commit(1) // everything stored; only ClickHouse counts
	p.exact(p.live())
}

// Without a reachable ClickHouse the snapshot says why and shows this
// replica's totals.
func TestFleetTotalsFallBackWhileClickHouseIsDown(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	store, err := chstore.Open(chstore.Options{Addr: addr, DialTimeout: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	ns := natstest.Start(t)
	nc, err := nats.Connect(ns.URL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	if _, err := usage.EnsureStream(context.Background(), js, usage.StreamConfig{Name: "USAGE"}); err != nil {
		t.Fatal(err)
	}
	l := New(Options{Local: (&counter{}).InFlight, Store: store, Conn: nc})
	l.Record(usage.Event{Endpoint: "a", Model: "tiny", InputTokens: usage.Int64(1), OutputTokens: usage.Int64(2)})
	defer l.Close()
	waitFor(t, "the ClickHouse error to be reported", func() bool {
		return strings.Contains(l.Snapshot().Tokens.Reason, "clickhouse")
	})
	s := l.Snapshot()
	if s.Tokens.Mode != ModeLocal || s.TokenUsageCounts["a"]["tiny"] != 3 {
		t.Fatalf("snapshot %+v, want this replica's totals in local mode", s)
	}
}

func jsonMarshal(v any) ([]byte, error) { return json.Marshal(v) }
