package ingest_test

import (
	"testing"
	"time"
)

// NATS and ClickHouse away together (as when a NATS cluster loses its
// quorum while ClickHouse is restarting): the batch is held, the leases
// lapse, and every partition's rows are dropped with its term. Once both
// are back the aggregator takes its partitions again and stores everything
// exactly: a batcher left waiting to retry a batch that no longer holds
// anything must go back to reading the fetchers.
func TestLeasesLostWhileABatchIsHeld(t *testing.T) {
	e := newEnv(t)
	g := e.startAgg("a1")
	e.publish(2000, 21)
	e.waitExact(30 * time.Second)

	e.ch.Stop()
	e.publish(500, 22)
	waitLeaseCond(t, 30*time.Second, "an insert to fail while ClickHouse is down", func() bool { return counter(g.m.InsertFailures) > 0 })
	e.nats.Stop()
	waitLeaseCond(t, 30*time.Second, "the leases to be lost while NATS is down", func() bool { return counter(g.m.LeasesLost) >= partitions })
	e.nats.Restart()
	e.ch.Restart()
	e.publish(500, 23)
	e.waitExact(60 * time.Second)
}
