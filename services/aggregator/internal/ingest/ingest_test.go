package ingest_test

import (
	"context"
	"errors"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/droverhq/drover/pkg/chstore"
	"github.com/droverhq/drover/pkg/usage"
	"github.com/droverhq/drover/services/aggregator/internal/ingest"
)

func TestNormalFlow(t *testing.T) {
	e := newEnv(t)
	g := e.startAgg("a1")
	e.publish(8000, 1)
	e.waitExact(30 * time.Second)
	e.publish(2000, 2)
	e.waitExact(30 * time.Second)
	if n := counter(g.m.EventsInserted); n != 10000 {
		t.Fatalf("events inserted metric = %v, want 10000", n)
	}
	if n := counter(g.m.PartitionsOwned); n != partitions {
		t.Fatalf("partitions owned = %v, want %d", n, partitions)
	}
}

// The aggregator stores a batch and dies before acknowledging any of it.
// Its successor must not store that batch again, nor lose anything after it.
func TestCrashBetweenInsertAndAck(t *testing.T) {
	e := newEnv(t)
	e.publish(6000, 3)
	var crashedRows atomic.Int64
	first := e.startAgg("doomed", func(o *ingest.Options) {
		o.BatchSize = 2000
		o.AfterInsert = func(rows []chstore.EventRow) error {
			if len(rows) == 0 {
				return nil
			}
			crashedRows.Store(int64(len(rows)))
			return errors.New("killed between insert and ack")
		}
	})
	select {
	case err := <-first.done:
		first.stopped = true
		if err == nil {
			t.Fatal("Run returned nil after a simulated crash")
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the crash hook never ran")
	}
	first.nc.Close() // a dead process's connection goes away too
	if crashedRows.Load() == 0 {
		t.Fatal("crashed before inserting anything")
	}
	rows, _ := e.rawCounts()
	if rows == 0 {
		t.Fatal("the crashed batch is not in ClickHouse")
	}
	e.publish(1000, 4)
	second := e.startAgg("successor")
	e.waitExact(30 * time.Second)
	if n := counter(second.m.EventsInserted); n != float64(7000)-float64(rows) {
		t.Fatalf("successor inserted %v events, want %v", n, 7000-rows)
	}
}

// Each event is published twice with the same id, and inserts are slower
// than the ack wait, so JetStream redelivers what the aggregator holds.
func TestDuplicatesAndRedeliveries(t *testing.T) {
	e := newEnv(t)
	r := rand.New(rand.NewPCG(5, 5))
	evs := make([]usage.Event, 3000)
	for i := range evs {
		evs[i] = e.event(r, time.Now().Add(-time.Duration(i)*time.Second))
	}
	e.publishEvents(e.js, evs)
	// Republish every event (a proxy retrying after a lost ack): the stream's
	// duplicate window drops them, so they must not be counted.
	dups := 0
	for _, ev := range evs {
		ack, err := e.js.PublishMsg(context.Background(), eventMsg(ev))
		if err != nil {
			t.Fatal(err)
		}
		if ack.Duplicate {
			dups++
		}
	}
	if dups != len(evs) {
		t.Fatalf("%d of %d republishes were flagged duplicate", dups, len(evs))
	}
	var slow atomic.Int32
	g := e.startAgg("a1", func(o *ingest.Options) {
		o.AckWait = 300 * time.Millisecond
		o.BatchSize = 1000
		o.AfterInsert = func([]chstore.EventRow) error {
			if slow.Add(1) <= 2 {
				time.Sleep(time.Second) // longer than AckWait: redeliveries pile up
			}
			return nil
		}
	})
	e.waitExact(30 * time.Second)
	if counter(g.m.Redeliveries) == 0 || counter(g.m.Duplicates) == 0 {
		t.Fatalf("no redelivery was exercised: redeliveries %v, duplicates %v",
			counter(g.m.Redeliveries), counter(g.m.Duplicates))
	}
}

func TestClickHouseOutage(t *testing.T) {
	e := newEnv(t)
	g := e.startAgg("a1")
	e.publish(2000, 6)
	e.waitExact(30 * time.Second)

	e.ch.Stop()
	// Events keep coming for as long as ClickHouse is down.
	restarted := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; ; i++ {
			e.publish(500, uint64(100+i))
			select {
			case <-restarted:
				return
			case <-time.After(200 * time.Millisecond): // pacing, like proxies' traffic
			}
		}
	}()
	deadline := time.Now().Add(30 * time.Second)
	for g.a.Healthy() == nil || counter(g.m.InsertFailures) == 0 {
		if time.Now().After(deadline) {
			close(restarted)
			wg.Wait()
			t.Fatalf("with ClickHouse down: healthy %v, %v insert failures; want unhealthy after a failed insert", g.a.Healthy(), counter(g.m.InsertFailures))
		}
		time.Sleep(50 * time.Millisecond)
	}
	e.ch.Restart()
	close(restarted)
	wg.Wait()
	e.waitExact(60 * time.Second)
	if counter(g.m.InsertFailures) == 0 {
		t.Fatal("no insert failed while ClickHouse was down")
	}
	if g.a.Healthy() != nil {
		t.Fatalf("still unhealthy after recovery: %v", g.a.Healthy())
	}
}

func TestTwoInstances(t *testing.T) {
	e := newEnv(t)
	a := e.startAgg("a1")
	b := e.startAgg("b1")
	// Both must end up with a share while events flow.
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) && (counter(a.m.PartitionsOwned) != partitions/2 || counter(b.m.PartitionsOwned) != partitions/2) {
		e.publish(200, uint64(time.Now().UnixNano()))
		time.Sleep(100 * time.Millisecond)
	}
	if counter(a.m.PartitionsOwned) != partitions/2 || counter(b.m.PartitionsOwned) != partitions/2 {
		t.Fatalf("partitions not balanced: a=%v b=%v", counter(a.m.PartitionsOwned), counter(b.m.PartitionsOwned))
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := range 10 {
			e.publish(500, uint64(200+i))
		}
	}()
	// One leaves mid-run, once both are inserting the new events; the
	// other takes everything over.
	aBefore, bBefore := counter(a.m.EventsInserted), counter(b.m.EventsInserted)
	deadline = time.Now().Add(20 * time.Second)
	for counter(a.m.EventsInserted) == aBefore || counter(b.m.EventsInserted) == bBefore {
		if time.Now().After(deadline) {
			t.Fatal("the new events were not being inserted by both instances")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := a.stop(t); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	e.waitExact(30 * time.Second)
	if counter(b.m.PartitionsOwned) != partitions {
		t.Fatalf("survivor owns %v partitions, want %d", counter(b.m.PartitionsOwned), partitions)
	}
	if counter(a.m.EventsInserted) == 0 || counter(b.m.EventsInserted) == 0 {
		t.Fatalf("one instance did no work: a=%v b=%v", counter(a.m.EventsInserted), counter(b.m.EventsInserted))
	}
}

func TestPoisonMessageIsDeadLettered(t *testing.T) {
	e := newEnv(t)
	dead := make(chan *nats.Msg, 16)
	sub, err := e.nc.ChanSubscribe(ingest.DefaultDeadLetterSubject, dead)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	g := e.startAgg("a1")
	e.publish(1000, 7)
	poison := [][]byte{[]byte("{not json"), []byte(`{"schema":"usage.v1","id":"x","time":"2026-01-01T00:00:00Z","input_tokens":-5,"output_tokens":1}`)}
	for i, body := range poison {
		if _, err := e.js.Publish(context.Background(), usage.PartitionSubject(i+3), body); err != nil {
			t.Fatal(err)
		}
	}
	e.publish(1000, 8)
	for range poison {
		select {
		case m := <-dead:
			if m.Header.Get("Drover-Error") == "" || m.Header.Get("Drover-Subject") == "" {
				t.Fatalf("dead letter without headers: %v", m.Header)
			}
		case <-time.After(20 * time.Second):
			t.Fatal("poison message never reached the dead-letter subject")
		}
	}
	e.waitExact(30 * time.Second)
	if n := counter(g.m.DeadLettered); n != float64(len(poison)) {
		t.Fatalf("dead-lettered metric = %v, want %d", n, len(poison))
	}
}

// With a flush interval far beyond the test and a batch larger than what is
// published, only shutdown can flush.
func TestShutdownFlushes(t *testing.T) {
	e := newEnv(t)
	g := e.startAgg("a1", func(o *ingest.Options) {
		o.FlushInterval = time.Hour
		o.BatchSize = 100000
	})
	e.publish(4000, 9)
	// Wait until the aggregator holds everything (all delivered, none acked).
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) && ackPending(t, e.js) < 4000 {
		time.Sleep(50 * time.Millisecond)
	}
	if n := ackPending(t, e.js); n < 4000 {
		t.Fatalf("aggregator holds %d events, want 4000", n)
	}
	// Give a wrong early flush a chance to show (there is no event to wait
	// for when nothing should happen); the batch also takes what is in the
	// pull buffer meanwhile.
	time.Sleep(300 * time.Millisecond)
	if rows, _ := e.rawCounts(); rows != 0 {
		t.Fatalf("%d rows inserted before shutdown", rows)
	}
	if err := g.stop(t); err != nil {
		t.Fatal(err)
	}
	e.waitExact(5 * time.Second)
	if n := ackPending(t, e.js); n != 0 {
		t.Fatalf("%d messages left unacknowledged after shutdown", n)
	}
}

func ackPending(t *testing.T, js jetstream.JetStream) int {
	t.Helper()
	n := 0
	for p := range partitions {
		c, err := js.Consumer(context.Background(), streamName, ingest.ConsumerName(p))
		if err != nil {
			continue
		}
		info, err := c.Info(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		n += info.NumAckPending
	}
	return n
}
