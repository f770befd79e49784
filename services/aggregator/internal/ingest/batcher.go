package ingest

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/droverhq/drover/pkg/chstore"
)

// partState is the batcher's knowledge of one owned partition.
type partState struct {
	term      uint64
	committed uint64 // highest sequence known stored in ClickHouse
	last      uint64 // highest sequence stored or held in the batch
}

// heldMsg is a message to acknowledge once the batch is stored.
type heldMsg struct {
	p    int
	term uint64
	msg  jetstream.Msg
}

// batcher is the state of the batch goroutine; nothing else touches it.
type batcher struct {
	a       *Aggregator
	parts   map[int]*partState
	rows    []chstore.EventRow
	held    []heldMsg
	firstAt time.Time // when the oldest held row arrived

	retrying bool
	backoff  time.Duration
}

// batchLoop owns the batch. It returns errCrash when AfterInsert asks for a
// crash, and nil when ctx ends.
func (a *Aggregator) batchLoop(ctx context.Context) error {
	b := &batcher{a: a, parts: map[int]*partState{}, backoff: a.o.RetryMin}
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		// Take more only while the batch has room and ClickHouse is not
		// failing: a held batch stops the fetchers through back-pressure.
		var in <-chan item
		if !b.retrying && len(b.rows) < a.o.BatchSize {
			in = a.in
		}
		var wake <-chan time.Time
		if len(b.rows) > 0 || len(b.held) > 0 {
			d := time.Until(b.firstAt.Add(a.o.FlushInterval))
			if b.retrying {
				d = b.backoff
			}
			timer.Reset(max(d, 0))
			wake = timer.C
		}
		select {
		case it := <-in:
			b.add(it)
			if len(b.rows) >= a.o.BatchSize {
				if err := b.tryFlush(ctx); errors.Is(err, errCrash) {
					return err
				}
			}
		case <-wake:
			if err := b.tryFlush(ctx); errors.Is(err, errCrash) {
				return err
			}
		case c := <-a.cmds:
			switch c := c.(type) {
			case dropCmd:
				if c.flush {
					if err := b.tryFlush(ctx); errors.Is(err, errCrash) {
						close(c.done)
						return err
					}
				}
				if st := b.parts[c.p]; st != nil && st.term == c.term {
					b.forget(c.p)
					delete(b.parts, c.p)
				}
				close(c.done)
			case finalCmd:
				// The fetchers have stopped: what they already handed over
				// is ours to flush too.
				b.drain()
				err := b.flushUntil(ctx, c.deadline)
				c.done <- err
				if errors.Is(err, errCrash) {
					return err
				}
				<-ctx.Done()
				return nil
			}
		case <-ctx.Done():
			return nil
		}
		if !timer.Stop() {
			select {
			case <-timer.C:
			default:
			}
		}
	}
}

// drain adds every item waiting in the channel, ignoring the batch size:
// at shutdown one larger insert beats leaving events for redelivery.
func (b *batcher) drain() {
	for {
		select {
		case it := <-b.a.in:
			b.add(it)
		default:
			return
		}
	}
}

// add takes one item from a fetcher.
func (b *batcher) add(it item) {
	m := b.a.o.Metrics
	if it.start {
		// A new term replaces whatever an older term of p left behind.
		b.forget(it.p)
		b.parts[it.p] = &partState{term: it.term, committed: it.committed, last: it.committed}
		return
	}
	st := b.parts[it.p]
	if st == nil || st.term != it.term {
		return // from an ended term: not ours to acknowledge
	}
	if it.delivered > 1 {
		m.Redeliveries.Inc()
	}
	if it.seq <= st.last {
		// Already stored, or already in this batch: a redelivery.
		m.Duplicates.Inc()
		if it.seq <= st.committed {
			_ = it.msg.Ack()
		} else {
			b.held = append(b.held, heldMsg{p: it.p, term: it.term, msg: it.msg})
		}
		return
	}
	st.last = it.seq
	if len(b.rows) == 0 && len(b.held) == 0 {
		b.firstAt = time.Now()
	}
	b.rows = append(b.rows, chstore.EventRow{Event: it.ev, Partition: uint16(it.p), Seq: it.seq})
	b.held = append(b.held, heldMsg{p: it.p, term: it.term, msg: it.msg})
}

// forget removes partition p from the batch without acknowledging it, and
// rewinds its state to what is committed.
func (b *batcher) forget(p int) {
	rows := b.rows[:0]
	for _, r := range b.rows {
		if int(r.Partition) != p {
			rows = append(rows, r)
		}
	}
	clear(b.rows[len(rows):])
	b.rows = rows
	held := b.held[:0]
	for _, h := range b.held {
		if h.p != p {
			held = append(held, h)
		}
	}
	clear(b.held[len(held):])
	b.held = held
	if st := b.parts[p]; st != nil {
		st.last = st.committed
	}
}

// tryFlush flushes once; on failure it arms the backoff.
func (b *batcher) tryFlush(ctx context.Context) error {
	err := b.flush(ctx)
	switch {
	case err == nil:
		b.retrying = false
		b.backoff = b.a.o.RetryMin
	case errors.Is(err, errCrash):
	default:
		b.a.o.Metrics.InsertFailures.Inc()
		b.a.o.Logger.Warn("insert failed; holding the batch and retrying",
			"rows", len(b.rows), "retry_in", b.backoff, "err", err)
		if b.retrying {
			b.backoff = min(b.backoff*2, b.a.o.RetryMax)
		}
		b.retrying = true
	}
	return err
}

// flushUntil retries the flush until it succeeds or deadline passes.
func (b *batcher) flushUntil(ctx context.Context, deadline time.Time) error {
	for {
		err := b.tryFlush(ctx)
		if err == nil || errors.Is(err, errCrash) {
			return err
		}
		wait := min(b.backoff, time.Until(deadline))
		if wait <= 0 {
			return err
		}
		select {
		case <-time.After(wait):
		case <-ctx.Done():
			return err
		}
	}
}

// flush stores the batch and then acknowledges it. Before inserting it
// drops partitions whose lease may have lapsed and rows ClickHouse already
// has (a writer that lost its lease may have inserted after we started).
func (b *batcher) flush(ctx context.Context) error {
	if len(b.rows) == 0 && len(b.held) == 0 {
		return nil
	}
	o := b.a.o
	// Fence: never insert for a partition whose lease may have lapsed. The
	// lease loop either renews it (and the retry goes through) or declares it
	// lost and drops it from the batch.
	now := time.Now().UnixNano()
	ps := make([]int, 0, len(b.parts))
	for p := range b.parts {
		if b.a.validUntil[p].Load() < now {
			return fmt.Errorf("lease of partition %d not renewed in time; holding its events", p)
		}
		ps = append(ps, p)
	}
	committed, err := o.Store.Committed(ctx, ps)
	b.a.noteCH(err)
	if err != nil {
		return err
	}
	rows := b.rows[:0:0]
	for _, r := range b.rows {
		if r.Seq > committed[int(r.Partition)] {
			rows = append(rows, r)
		} else {
			o.Metrics.Duplicates.Inc()
		}
	}
	start := time.Now()
	if err := o.Store.InsertEvents(ctx, rows); err != nil {
		b.a.noteCH(err)
		return fmt.Errorf("inserting batch: %w", err)
	}
	b.a.noteCH(nil)
	if len(rows) > 0 {
		o.Metrics.InsertSeconds.Observe(time.Since(start).Seconds())
		o.Metrics.BatchSize.Observe(float64(len(rows)))
		o.Metrics.EventsInserted.Add(float64(len(rows)))
	}
	if o.AfterInsert != nil {
		if err := o.AfterInsert(rows); err != nil {
			return fmt.Errorf("%w: %v", errCrash, err)
		}
	}
	for _, r := range rows {
		if st := b.parts[int(r.Partition)]; st != nil && r.Seq > st.committed {
			st.committed = r.Seq
		}
	}
	for p, seq := range committed {
		if st := b.parts[p]; st != nil && seq > st.committed {
			st.committed = seq
		}
	}
	for _, h := range b.held {
		_ = h.msg.Ack()
	}
	clear(b.rows)
	clear(b.held)
	b.rows, b.held = b.rows[:0], b.held[:0]
	return nil
}
