package ingest

import (
	"context"
	"errors"
	"hash/fnv"
	"strconv"
	"sync"
	"time"

	"github.com/droverhq/drover/services/aggregator/internal/lease"
)

const (
	// renewalsPerTTL is how many times a lease is renewed per TTL, so that
	// a few failed renewals in a row still leave it valid.
	renewalsPerTTL = 4
	// minRenewInterval bounds how often leases are renewed, however short
	// the TTL.
	minRenewInterval = 50 * time.Millisecond
	// fenceMarginPerTTL: inserts for a partition stop 1/fenceMarginPerTTL of
	// a TTL before its lease could expire, since renewal answers can take a
	// while under load.
	fenceMarginPerTTL = 3
	// releaseTimeout bounds giving every lease up at shutdown.
	releaseTimeout = 5 * time.Second
)

// owned is one partition lease this instance holds.
type owned struct {
	rev       uint64
	fetcher   *fetcherHandle
	releasing bool // flushing before it is given up
}

// leaseKeeper acquires, renews, balances and releases one Aggregator's
// partition leases, and runs a fetcher per owned partition.
//
// Its fields belong to the goroutine in run. Everything that waits for the
// batcher (which waits for the insert in flight) runs beside it, tracked
// by bg: ending the term of a lost partition, flushing a released one, and
// measuring consumer lag. So an insert that hangs never delays renewing the
// other leases.
type leaseKeeper struct {
	a        *Aggregator
	o        Options
	held     map[int]*owned
	term     uint64            // of the last fetcher started
	interval time.Duration     // between renewals; also bounds each lease operation
	margin   time.Duration     // how long before a lease expires inserts stop
	offset   int               // first partition this instance tries to take
	flushed  chan flushedLease // released leases whose partitions are flushed
	report   chan struct{}     // closed when the last lag report finished; nil before the first
	bg       sync.WaitGroup
}

func newLeaseKeeper(a *Aggregator) *leaseKeeper {
	o := a.o
	// Each instance walks the partitions from its own offset, so that
	// instances starting together do not all race for partition 0.
	h := fnv.New32a()
	h.Write([]byte(o.Leases.ID()))
	return &leaseKeeper{
		a:        a,
		o:        o,
		held:     map[int]*owned{},
		interval: max(o.LeaseTTL/renewalsPerTTL, minRenewInterval),
		margin:   o.LeaseTTL / fenceMarginPerTTL,
		offset:   int(h.Sum32() % uint32(o.Partitions)),
		flushed:  make(chan flushedLease, o.Partitions),
	}
}

// run keeps the leases until ctx ends. When fetchCtx ends it stops
// acquiring, stops every fetcher and closes fetchersStopped, but keeps
// renewing until ctx ends (the final flush runs under held leases); then it
// waits for its background work and releases every lease, unless the
// aggregator crashed.
func (k *leaseKeeper) run(ctx, fetchCtx context.Context, fetchersStopped chan<- struct{}) {
	stopFetching := fetchCtx.Done() // nil once stopped
	ticker := time.NewTicker(k.interval)
	defer ticker.Stop()
	k.renew(ctx)
	k.balance(ctx, fetchCtx)
	k.reportLag(ctx)
	for {
		select {
		case <-ticker.C:
			k.renew(ctx)
			if stopFetching != nil {
				k.balance(ctx, fetchCtx)
				k.reportLag(ctx)
			}
		case f := <-k.flushed:
			k.giveUp(ctx, f)
		case <-stopFetching:
			stopFetching = nil
			k.stopFetchers()
			close(fetchersStopped)
		case <-ctx.Done():
			if stopFetching != nil {
				k.stopFetchers()
				close(fetchersStopped)
			}
			k.bg.Wait()
			k.finish()
			return
		}
	}
}

// opCtx bounds one lease operation by the renewal interval, so that one
// slow answer cannot make the loop miss the next renewals.
func (k *leaseKeeper) opCtx(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, k.interval)
}

// validFrom records that p's lease was taken or renewed by a request sent
// at start: the batcher may insert p's rows until a margin before it ends.
func (k *leaseKeeper) validFrom(p int, start time.Time) {
	k.a.validUntil[p].Store(start.Add(k.o.LeaseTTL - k.margin).UnixNano())
}

// renew sends the heartbeat and renews every held lease, declaring lost
// those refused or not renewed within their TTL.
func (k *leaseKeeper) renew(ctx context.Context) {
	hctx, cancel := k.opCtx(ctx)
	err := k.o.Leases.Heartbeat(hctx)
	cancel()
	if err != nil && ctx.Err() == nil {
		k.o.Logger.Warn("lease heartbeat failed", "err", err)
	}
	for p, ow := range k.held {
		start := time.Now()
		rctx, cancel := k.opCtx(ctx)
		rev, err := k.o.Leases.Renew(rctx, p, ow.rev)
		cancel()
		switch {
		case err == nil:
			ow.rev = rev
			k.validFrom(p, start)
		case errors.Is(err, lease.ErrHeld):
			k.lose(ctx, p, "renewal refused", err)
		case time.Now().UnixNano() > k.a.validUntil[p].Load():
			k.lose(ctx, p, "not renewed within its TTL", err)
		default:
			if ctx.Err() == nil {
				k.o.Logger.Warn("lease renewal failed; will retry", "partition", p, "err", err)
			}
		}
	}
}

// lose ends p's term at once, without flushing: the lease is gone. The
// fence stops inserts of p from now on; telling the batcher to forget p
// waits for the insert in flight, so it runs beside the loop.
func (k *leaseKeeper) lose(ctx context.Context, p int, why string, err error) {
	ow := k.held[p]
	delete(k.held, p)
	k.a.validUntil[p].Store(0)
	k.o.Metrics.LeasesLost.Inc()
	k.o.Logger.Warn("partition lease lost", "partition", p, "why", why, "err", err)
	if ow.fetcher == nil {
		return
	}
	ow.fetcher.stop()
	term := ow.fetcher.term
	k.bg.Go(func() { k.drop(ctx, p, term, false) })
}

// release flushes p and then gives it up (through flushed); the flush waits
// for ClickHouse, so it runs beside the loop.
func (k *leaseKeeper) release(ctx context.Context, p int) {
	ow := k.held[p]
	ow.releasing = true
	k.bg.Go(func() {
		if ow.fetcher != nil {
			ow.fetcher.stop()
			k.drop(ctx, p, ow.fetcher.term, true)
		}
		k.flushed <- flushedLease{p, ow}
	})
}

// drop ends term of p in the batcher (after flushing it, with flush) and
// waits until the batcher has.
func (k *leaseKeeper) drop(ctx context.Context, p int, term uint64, flush bool) {
	done := make(chan struct{})
	if k.a.sendCmd(ctx, dropCmd{p: p, term: term, flush: flush, done: done}) {
		<-done
	}
}

// flushedLease is a released lease whose partition has been flushed.
type flushedLease struct {
	p  int
	ow *owned
}

// giveUp deletes a released and flushed lease, unless it was lost meanwhile.
func (k *leaseKeeper) giveUp(ctx context.Context, f flushedLease) {
	p, ow := f.p, f.ow
	if k.held[p] != ow {
		return
	}
	delete(k.held, p)
	k.a.validUntil[p].Store(0)
	if err := k.o.Leases.Release(ctx, p, ow.rev); err != nil && ctx.Err() == nil {
		k.o.Logger.Warn("releasing partition lease", "partition", p, "err", err)
	}
	k.o.Metrics.ConsumerLag.DeleteLabelValues(strconv.Itoa(p))
	k.o.Logger.Info("partition released", "partition", p)
}

// balance releases partitions above this instance's fair share, from the
// end of its walk, and acquires free ones up to it, from the start.
func (k *leaseKeeper) balance(ctx, fetchCtx context.Context) {
	bctx, cancel := k.opCtx(ctx)
	defer cancel()
	n, err := k.o.Leases.Instances(bctx)
	if err != nil {
		k.o.Logger.Warn("counting aggregator instances", "err", err)
		return
	}
	parts := k.o.Partitions
	fair := lease.FairShare(parts, n)
	active := 0
	for _, ow := range k.held {
		if !ow.releasing {
			active++
		}
	}
	for i := 0; i < parts && active > fair; i++ {
		p := (k.offset + parts - 1 - i) % parts
		if ow := k.held[p]; ow != nil && !ow.releasing {
			k.o.Logger.Info("releasing partition to rebalance", "partition", p, "instances", n, "fair_share", fair)
			k.release(ctx, p)
			active--
		}
	}
	for i := 0; i < parts && active < fair; i++ {
		p := (k.offset + i) % parts
		if k.held[p] != nil {
			continue
		}
		start := time.Now()
		rev, err := k.o.Leases.Acquire(bctx, p)
		if err != nil {
			if !errors.Is(err, lease.ErrHeld) {
				k.o.Logger.Warn("acquiring partition", "partition", p, "err", err)
			}
			continue
		}
		k.validFrom(p, start)
		k.held[p] = &owned{rev: rev, fetcher: k.startFetcher(fetchCtx, p)}
		active++
	}
}

// startFetcher starts a new ownership term of p.
func (k *leaseKeeper) startFetcher(fetchCtx context.Context, p int) *fetcherHandle {
	k.term++
	fctx, cancel := context.WithCancel(fetchCtx)
	fh := &fetcherHandle{term: k.term, cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(fh.done)
		k.a.fetch(fctx, p, fh.term)
	}()
	return fh
}

// stopFetchers stops every fetcher; the leases stay held.
func (k *leaseKeeper) stopFetchers() {
	for _, ow := range k.held {
		if ow.fetcher != nil {
			ow.fetcher.stop()
		}
	}
}

// reportLag measures consumer lag beside the loop, unless the previous
// report still runs.
func (k *leaseKeeper) reportLag(ctx context.Context) {
	k.o.Metrics.PartitionsOwned.Set(float64(len(k.held)))
	if k.report != nil {
		select {
		case <-k.report:
		default:
			return
		}
	}
	ps := make([]int, 0, len(k.held))
	for p := range k.held {
		ps = append(ps, p)
	}
	done := make(chan struct{})
	k.report = done
	k.bg.Go(func() {
		defer close(done)
		rctx, cancel := context.WithTimeout(ctx, k.o.LeaseTTL)
		defer cancel()
		for _, p := range ps {
			c, err := k.o.JS.Consumer(rctx, k.o.Stream, ConsumerName(p))
			if err != nil {
				continue
			}
			ci := c.CachedInfo()
			k.o.Metrics.ConsumerLag.WithLabelValues(strconv.Itoa(p)).Set(float64(ci.NumPending) + float64(ci.NumAckPending))
		}
	})
}

// finish gives up every lease still held, so that other instances take the
// partitions over at once. After a simulated crash it only forgets them:
// they expire as a dead process's would. Background work has finished.
func (k *leaseKeeper) finish() {
	if k.a.crashed.Load() {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), releaseTimeout)
	defer cancel()
	for p, ow := range k.held {
		k.a.validUntil[p].Store(0)
		if err := k.o.Leases.Release(ctx, p, ow.rev); err != nil {
			k.o.Logger.Warn("releasing partition lease at shutdown", "partition", p, "err", err)
		}
	}
	if err := k.o.Leases.Leave(ctx); err != nil {
		k.o.Logger.Warn("leaving lease table", "err", err)
	}
	k.o.Metrics.PartitionsOwned.Set(0)
}
