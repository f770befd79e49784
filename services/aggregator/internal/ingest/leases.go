package ingest

import (
	"context"
	"errors"
	"hash/fnv"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/droverhq/drover/services/aggregator/internal/lease"
)

// owned is one partition lease this instance holds; only the lease loop
// touches it.
type owned struct {
	rev       uint64
	fetcher   *fetcherHandle
	releasing bool
}

// leaseLoop acquires, renews, balances and releases partition leases, and
// starts and stops a fetcher per owned partition. When fetchCtx ends it
// stops acquiring, stops every fetcher and closes fetchersStopped, but keeps
// renewing until ctx ends (the final flush runs under held leases); then it
// releases every lease, unless the aggregator crashed.
func (a *Aggregator) leaseLoop(ctx, fetchCtx context.Context, fetchersStopped chan<- struct{}) {
	o := a.o
	held := map[int]*owned{}
	var term uint64
	released := make(chan int, o.Partitions)
	interval := max(o.LeaseTTL/4, 50*time.Millisecond)
	// Renewal answers can take a while under load: stop inserting a
	// third of a TTL before the lease could expire.
	margin := o.LeaseTTL / 3
	// Each instance walks the partitions from its own offset, so that
	// instances starting together do not all race for partition 0.
	h := fnv.New32a()
	h.Write([]byte(o.Leases.ID()))
	offset := int(h.Sum32() % uint32(o.Partitions))

	stopFetching := fetchCtx.Done()
	stopping := false
	ticker := time.NewTicker(interval)
	defer ticker.Stop()

	startFetcher := func(p int) *fetcherHandle {
		term++
		fctx, cancel := context.WithCancel(fetchCtx)
		fh := &fetcherHandle{term: term, cancel: cancel, done: make(chan struct{})}
		go func() {
			defer close(fh.done)
			a.fetch(fctx, p, fh.term)
		}()
		return fh
	}
	// lose ends a term at once, without flushing: the lease is gone.
	lose := func(p int, why string, err error) {
		ow := held[p]
		delete(held, p)
		a.validUntil[p].Store(0)
		o.Metrics.LeasesLost.Inc()
		o.Logger.Warn("partition lease lost", "partition", p, "why", why, "err", err)
		if ow.fetcher != nil {
			ow.fetcher.stop()
			done := make(chan struct{})
			if a.sendCmd(ctx, dropCmd{p: p, term: ow.fetcher.term, done: done}) {
				<-done
			}
		}
	}
	// release flushes and then gives p up; it runs beside the loop so
	// that renewals go on while the flush waits for ClickHouse.
	release := func(p int) {
		ow := held[p]
		ow.releasing = true
		go func() {
			if ow.fetcher != nil {
				ow.fetcher.stop()
				done := make(chan struct{})
				if a.sendCmd(ctx, dropCmd{p: p, term: ow.fetcher.term, flush: true, done: done}) {
					<-done
				}
			}
			released <- p
		}()
	}
	// Every lease operation is bounded by the renewal interval, so that one
	// slow answer cannot make the loop miss the next renewals.
	opCtx := func() (context.Context, context.CancelFunc) { return context.WithTimeout(ctx, interval) }
	renew := func() {
		hctx, cancel := opCtx()
		err := o.Leases.Heartbeat(hctx)
		cancel()
		if err != nil && ctx.Err() == nil {
			o.Logger.Warn("lease heartbeat failed", "err", err)
		}
		for p, ow := range held {
			start := time.Now()
			rctx, cancel := opCtx()
			rev, err := o.Leases.Renew(rctx, p, ow.rev)
			cancel()
			switch {
			case err == nil:
				ow.rev = rev
				a.validUntil[p].Store(start.Add(o.LeaseTTL - margin).UnixNano())
			case errors.Is(err, lease.ErrHeld):
				lose(p, "renewal refused", err)
			case time.Now().UnixNano() > a.validUntil[p].Load():
				lose(p, "not renewed within its TTL", err)
			default:
				if ctx.Err() == nil {
					o.Logger.Warn("lease renewal failed; will retry", "partition", p, "err", err)
				}
			}
		}
	}
	balance := func() {
		bctx, cancel := opCtx()
		defer cancel()
		n, err := o.Leases.Instances(bctx)
		if err != nil {
			o.Logger.Warn("counting aggregator instances", "err", err)
			return
		}
		fair := lease.FairShare(o.Partitions, n)
		active := 0
		for _, ow := range held {
			if !ow.releasing {
				active++
			}
		}
		for i := 0; i < o.Partitions && active > fair; i++ {
			p := (offset + o.Partitions - 1 - i) % o.Partitions
			if ow := held[p]; ow != nil && !ow.releasing {
				o.Logger.Info("releasing partition to rebalance", "partition", p, "instances", n, "fair_share", fair)
				release(p)
				active--
			}
		}
		for i := 0; i < o.Partitions && active < fair; i++ {
			p := (offset + i) % o.Partitions
			if held[p] != nil {
				continue
			}
			start := time.Now()
			rev, err := o.Leases.Acquire(bctx, p)
			if err != nil {
				if !errors.Is(err, lease.ErrHeld) {
					o.Logger.Warn("acquiring partition", "partition", p, "err", err)
				}
				continue
			}
			a.validUntil[p].Store(start.Add(o.LeaseTTL - margin).UnixNano())
			held[p] = &owned{rev: rev, fetcher: startFetcher(p)}
			active++
		}
	}
	// report measures consumer lag beside the loop; reporting is skipped
	// while the previous report still runs.
	var reporting atomic.Bool
	report := func() {
		o.Metrics.PartitionsOwned.Set(float64(len(held)))
		if !reporting.CompareAndSwap(false, true) {
			return
		}
		ps := make([]int, 0, len(held))
		for p := range held {
			ps = append(ps, p)
		}
		go func() {
			defer reporting.Store(false)
			rctx, cancel := context.WithTimeout(ctx, o.LeaseTTL)
			defer cancel()
			for _, p := range ps {
				c, err := o.JS.Consumer(rctx, o.Stream, ConsumerName(p))
				if err != nil {
					continue
				}
				ci := c.CachedInfo()
				o.Metrics.ConsumerLag.WithLabelValues(strconv.Itoa(p)).Set(float64(ci.NumPending) + float64(ci.NumAckPending))
			}
		}()
	}
	renew()
	balance()
	report()
	for {
		select {
		case <-ticker.C:
			renew()
			if !stopping {
				balance()
				report()
			}
		case p := <-released:
			if ow := held[p]; ow != nil {
				delete(held, p)
				a.validUntil[p].Store(0)
				if err := o.Leases.Release(ctx, p, ow.rev); err != nil && ctx.Err() == nil {
					o.Logger.Warn("releasing partition lease", "partition", p, "err", err)
				}
				o.Metrics.ConsumerLag.DeleteLabelValues(strconv.Itoa(p))
				o.Logger.Info("partition released", "partition", p)
			}
		case <-stopFetching:
			stopFetching = nil
			stopping = true
			for _, ow := range held {
				if ow.fetcher != nil {
					ow.fetcher.stop()
				}
			}
			close(fetchersStopped)
		case <-ctx.Done():
			if !stopping {
				for _, ow := range held {
					if ow.fetcher != nil {
						ow.fetcher.stop()
					}
				}
				close(fetchersStopped)
			}
			for reporting.Load() {
				time.Sleep(10 * time.Millisecond)
			}
			a.finishLeases(held, released)
			return
		}
	}
}

// finishLeases waits for releases in flight and then gives up every lease
// still held, so that other instances take the partitions over at once. After
// a simulated crash it only forgets them: they expire as a dead process's
// would.
func (a *Aggregator) finishLeases(held map[int]*owned, released chan int) {
	for _, ow := range held {
		if ow.releasing {
			<-released
		}
	}
	if a.crashed.Load() {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for p, ow := range held {
		a.validUntil[p].Store(0)
		if err := a.o.Leases.Release(ctx, p, ow.rev); err != nil {
			a.o.Logger.Warn("releasing partition lease at shutdown", "partition", p, "err", err)
		}
	}
	if err := a.o.Leases.Leave(ctx); err != nil {
		a.o.Logger.Warn("leaving lease table", "err", err)
	}
	a.o.Metrics.PartitionsOwned.Set(0)
}
