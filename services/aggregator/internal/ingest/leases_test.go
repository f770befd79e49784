package ingest_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/droverhq/drover/pkg/chstore"
	"github.com/droverhq/drover/services/aggregator/internal/ingest"
	"github.com/droverhq/drover/services/aggregator/internal/lease"
)

// A lost lease ends its partition's term in the batcher, which has to wait
// for the insert in flight. Renewing the other leases must go on meanwhile:
// here an insert is held for longer than a lease's TTL while partition 0's
// lease is taken away, and every other partition's lease must keep being
// renewed (its revision moves on, and this instance still holds it).
func TestLostLeaseDoesNotStopRenewalsDuringAnInsert(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	inserting := make(chan struct{}) // closed when the held insert has begun
	unblock := make(chan struct{})   // closed to let it finish
	var hold, finish sync.Once
	g := e.startAgg("a1", func(o *ingest.Options) {
		o.AfterInsert = func(rows []chstore.EventRow) error {
			if len(rows) > 0 {
				hold.Do(func() {
					close(inserting)
					<-unblock
				})
			}
			return nil
		}
	})
	t.Cleanup(func() { finish.Do(func() { close(unblock) }) }) // runs before the aggregator's stop

	kv, err := e.js.KeyValue(ctx, bucket)
	if err != nil {
		t.Fatal(err)
	}
	revision := func(p int) (uint64, string) {
		entry, err := kv.Get(ctx, fmt.Sprintf("partition.%d", p))
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			return 0, ""
		}
		if err != nil {
			t.Fatal(err)
		}
		return entry.Revision(), string(entry.Value())
	}
	waitLeaseCond(t, 30*time.Second, "a1 to hold every partition", func() bool {
		for p := range partitions {
			if _, holder := revision(p); holder != "a1" {
				return false
			}
		}
		return true
	})

	e.publish(500, 11)
	select {
	case <-inserting:
	case <-time.After(30 * time.Second):
		t.Fatal("no insert began")
	}

	// Take partition 0 away: its next renewal is refused.
	thief, err := lease.Open(ctx, e.js, bucket, "thief", testLeaseTTL, 1)
	if err != nil {
		t.Fatal(err)
	}
	rev, _ := revision(0)
	if err := thief.Release(ctx, 0, rev); err != nil {
		t.Fatal(err)
	}
	if _, err := thief.Acquire(ctx, 0); err != nil {
		t.Fatalf("taking partition 0: %v", err)
	}
	waitLeaseCond(t, 30*time.Second, "a1 to notice it lost partition 0", func() bool { return counter(g.m.LeasesLost) >= 1 })

	// The insert is still held. Every other lease must be renewed twice
	// more, which takes about half a TTL; without renewals they would
	// expire after one.
	start := map[int]uint64{}
	for p := 1; p < partitions; p++ {
		start[p], _ = revision(p)
	}
	waitLeaseCond(t, 5*testLeaseTTL, "the other leases to be renewed while the insert is held", func() bool {
		for p := 1; p < partitions; p++ {
			rev, holder := revision(p)
			if holder != "a1" {
				t.Fatalf("partition %d is held by %q during the held insert", p, holder)
			}
			if rev < start[p]+2 {
				return false
			}
		}
		return true
	})
	select {
	case <-g.done:
		t.Fatal("the aggregator stopped")
	default:
	}
	finish.Do(func() { close(unblock) })
}

// waitLeaseCond polls cond until it holds, failing the test after timeout.
func waitLeaseCond(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		<-tick.C
	}
}
