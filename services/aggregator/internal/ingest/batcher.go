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
	last      uint64 // highest sequence stored, in flight or held
}

// ackPoint is the message to acknowledge for one partition and term once
// its batch is stored. The consumers are AckAll: acknowledging the highest
// sequence received acknowledges every delivery before it, so one ack per
// partition and batch replaces one per message.
type ackPoint struct {
	p    int
	term uint64
	seq  uint64
	msg  jetstream.Msg
}

// batch is rows in arrival order (so in sequence order per partition), the
// term each row was read in, and what to acknowledge after storing.
type batch struct {
	rows  []chstore.EventRow
	terms []uint64
	acks  []ackPoint // at most one per (partition, term): its highest sequence
}

func (b *batch) empty() bool { return len(b.rows) == 0 && len(b.acks) == 0 }

// noteAck records a as the ack of its partition and term unless one with a
// higher (or, for a redelivery, the same) sequence is already there.
func (b *batch) noteAck(a ackPoint) {
	for i := range b.acks {
		if b.acks[i].p == a.p && b.acks[i].term == a.term {
			if a.seq > b.acks[i].seq {
				b.acks[i] = a
			}
			return
		}
	}
	b.acks = append(b.acks, a)
}

// insertResult is what the insert goroutine reports.
type insertResult struct {
	b         *batch
	stored    []chstore.EventRow // rows actually inserted (after the committed check)
	committed map[int]uint64     // committed sequences read before the insert
	err       error
}

// batcher is the state of the batch goroutine; nothing else touches it.
// At most one insert is in flight, so batches are stored in order: a later
// batch is never stored while an earlier one of the same partition can
// still fail (which would make the earlier one look committed).
type batcher struct {
	a       *Aggregator
	parts   map[int]*partState
	cur     *batch
	firstAt time.Time // when the oldest row of cur arrived

	inflight *batch
	results  chan insertResult

	retrying bool
	backoff  time.Duration
}

// batchLoop owns the batch. It returns errCrash when AfterInsert asks for a
// crash, and nil when ctx ends.
func (a *Aggregator) batchLoop(ctx context.Context) error {
	b := &batcher{a: a, parts: map[int]*partState{}, cur: &batch{}, backoff: a.o.RetryMin, results: make(chan insertResult, 1)}
	defer b.waitInflight()
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		if b.retrying && b.inflight == nil && b.cur.empty() {
			// What was held belonged to terms that ended (dropped with
			// their leases): nothing is left to retry, and staying in
			// retry would stop reading the fetchers for good.
			b.retrying, b.backoff = false, a.o.RetryMin
		}
		ready := len(b.cur.rows) >= a.o.BatchSize
		// While an insert runs the next batch may grow past BatchSize, up
		// to maxBatch: when ClickHouse is the bottleneck it then gets fewer,
		// larger blocks, which cost it less per row.
		limit := a.o.BatchSize
		if b.inflight != nil {
			limit = a.maxBatch()
		}
		// Take more only while the batch has room and ClickHouse is not
		// failing: a held batch stops the fetchers through back-pressure.
		var in <-chan chunk
		if !b.retrying && len(b.cur.rows) < limit {
			in = a.in
		}
		var wake <-chan time.Time
		if b.inflight == nil && !b.cur.empty() {
			d := time.Until(b.firstAt.Add(a.o.FlushInterval))
			if b.retrying {
				d = b.backoff
			} else if ready {
				d = 0
			}
			timer.Reset(max(d, 0))
			wake = timer.C
		}
		select {
		case c := <-in:
			b.add(c)
			if len(b.cur.rows) >= a.o.BatchSize && b.inflight == nil {
				b.start(ctx)
			}
		case <-wake:
			b.start(ctx)
		case r := <-b.results:
			if err := b.finish(r); errors.Is(err, errCrash) {
				return err
			}
		case c := <-a.cmds:
			switch c := c.(type) {
			case dropCmd:
				if err := b.waitInflight(); errors.Is(err, errCrash) {
					close(c.done)
					return err
				}
				if c.flush {
					if err := b.flushNow(ctx); errors.Is(err, errCrash) {
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
				err := b.waitInflight()
				if err == nil || !errors.Is(err, errCrash) {
					err = b.flushUntil(ctx, c.deadline)
				}
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

// growWhileInserting is how many times BatchSize a batch may grow to while
// the previous insert runs.
const growWhileInserting = 4

// maxBatch is how large a batch may grow while the previous insert runs.
func (a *Aggregator) maxBatch() int { return growWhileInserting * a.o.BatchSize }

// drain adds every item waiting in the channel, ignoring the batch size:
// at shutdown one larger insert beats leaving events for redelivery.
func (b *batcher) drain() {
	for {
		select {
		case c := <-b.a.in:
			b.add(c)
		default:
			return
		}
	}
}

// add takes one chunk from a fetcher. Within a term the fetcher hands over
// every sequence after committed once, in order (fetch); anything at or
// below the last sequence held is a redelivery, so only counted, and
// acknowledged with the batch.
func (b *batcher) add(c chunk) {
	m := b.a.o.Metrics
	if c.start {
		// A new term replaces whatever an older term of p left behind.
		b.forget(c.p)
		b.parts[c.p] = &partState{term: c.term, committed: c.committed, last: c.committed}
		return
	}
	st := b.parts[c.p]
	if st == nil || st.term != c.term || len(c.items) == 0 {
		return // from an ended term: not ours to acknowledge
	}
	if b.cur.empty() {
		b.firstAt = time.Now()
	}
	top := &c.items[0]
	for i := range c.items {
		f := &c.items[i]
		if f.delivered > 1 {
			m.Redeliveries.Inc()
		}
		if f.seq > top.seq {
			top = f
		}
		if f.seq <= st.last {
			// Already stored, in flight or held: a redelivery.
			m.Duplicates.Inc()
			continue
		}
		st.last = f.seq
		b.cur.rows = append(b.cur.rows, chstore.EventRow{Event: f.ev, Partition: uint16(c.p), Seq: f.seq})
		b.cur.terms = append(b.cur.terms, c.term)
	}
	b.cur.noteAck(ackPoint{p: c.p, term: c.term, seq: top.seq, msg: top.msg})
}

// forget removes partition p from the current batch without acknowledging
// it, and rewinds its state to what is committed. Call it with no insert in
// flight.
func (b *batcher) forget(p int) {
	b.cur = b.cur.without(func(q int, _ uint64) bool { return q == p })
	if st := b.parts[p]; st != nil {
		st.last = st.committed
	}
}

// without returns a copy of bt minus the rows and messages drop selects.
func (bt *batch) without(drop func(p int, term uint64) bool) *batch {
	out := &batch{}
	for i, r := range bt.rows {
		if !drop(int(r.Partition), bt.terms[i]) {
			out.rows = append(out.rows, r)
			out.terms = append(out.terms, bt.terms[i])
		}
	}
	for _, a := range bt.acks {
		if !drop(a.p, a.term) {
			out.acks = append(out.acks, a)
		}
	}
	return out
}

// start hands the current batch to an insert goroutine.
func (b *batcher) start(ctx context.Context) {
	if b.inflight != nil || b.cur.empty() {
		return
	}
	bt := b.cur
	b.cur, b.inflight = &batch{}, bt
	go func() { b.results <- b.a.store(ctx, bt) }()
}

// waitInflight waits for the insert in flight, if any, and settles it.
func (b *batcher) waitInflight() error {
	if b.inflight == nil {
		return nil
	}
	return b.finish(<-b.results)
}

// finish settles an insert: acknowledge on success; on failure put the
// batch back in front of what arrived since, and back off.
func (b *batcher) finish(r insertResult) error {
	b.inflight = nil
	o := b.a.o
	if errors.Is(r.err, errCrash) {
		return r.err
	}
	if r.err != nil {
		o.Metrics.InsertFailures.Inc()
		o.Logger.Warn("insert failed; holding the batch and retrying",
			"rows", len(r.b.rows), "retry_in", b.backoff, "err", r.err)
		if b.retrying {
			b.backoff = min(b.backoff*2, o.RetryMax)
		}
		b.retrying = true
		// Rows of terms that ended meanwhile are not ours any more.
		stale := func(p int, term uint64) bool {
			st := b.parts[p]
			return st == nil || st.term != term
		}
		back := r.b.without(stale)
		back.rows = append(back.rows, b.cur.rows...)
		back.terms = append(back.terms, b.cur.terms...)
		for _, a := range b.cur.acks {
			back.noteAck(a)
		}
		b.cur = back
		if !b.cur.empty() && len(back.rows) > 0 {
			b.firstAt = time.Now()
		}
		return r.err
	}
	b.retrying = false
	b.backoff = o.RetryMin
	for _, row := range r.stored {
		if st := b.parts[int(row.Partition)]; st != nil && row.Seq > st.committed {
			st.committed = row.Seq
		}
	}
	for p, seq := range r.committed {
		if st := b.parts[p]; st != nil && seq > st.committed {
			st.committed = seq
		}
	}
	// Only for terms still running: a new term's consumer starts from
	// ClickHouse's committed sequence and owes nothing to an old one.
	for _, a := range r.b.acks {
		if st := b.parts[a.p]; st != nil && st.term == a.term {
			_ = a.msg.Ack()
		}
	}
	return nil
}

// flushNow stores the current batch synchronously (no insert in flight).
func (b *batcher) flushNow(ctx context.Context) error {
	if b.cur.empty() {
		return nil
	}
	b.start(ctx)
	return b.waitInflight()
}

// flushUntil retries flushNow until it succeeds or deadline passes.
func (b *batcher) flushUntil(ctx context.Context, deadline time.Time) error {
	for {
		err := b.flushNow(ctx)
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

// store inserts one batch; it runs on its own goroutine and touches no
// batcher state. Before inserting it checks the leases of partitions (a
// fence) and drops rows ClickHouse already has (a writer that lost its lease
// may have inserted after this term started).
func (a *Aggregator) store(ctx context.Context, bt *batch) insertResult {
	o := a.o
	res := insertResult{b: bt}
	if len(bt.rows) == 0 {
		return res
	}
	var owned []int
	seen := make([]bool, len(a.validUntil))
	for _, r := range bt.rows {
		if p := int(r.Partition); !seen[p] {
			seen[p] = true
			owned = append(owned, p)
		}
	}
	// Fence: never insert for a partition whose lease may have lapsed. The
	// lease keeper either renews it (and the retry goes through) or declares
	// it lost and drops it from the batch.
	now := time.Now().UnixNano()
	for _, p := range owned {
		if a.validUntil[p].Load() < now {
			res.err = fmt.Errorf("lease of partition %d not renewed in time; holding its events", p)
			return res
		}
	}
	committed, err := o.Store.Committed(ctx, owned)
	a.noteCH(err)
	if err != nil {
		res.err = err
		return res
	}
	rows := make([]chstore.EventRow, 0, len(bt.rows))
	for _, r := range bt.rows {
		if r.Seq > committed[int(r.Partition)] {
			rows = append(rows, r)
		} else {
			o.Metrics.Duplicates.Inc()
		}
	}
	start := time.Now()
	if err := o.Store.InsertEvents(ctx, rows); err != nil {
		a.noteCH(err)
		res.err = fmt.Errorf("inserting batch: %w", err)
		return res
	}
	a.noteCH(nil)
	if len(rows) > 0 {
		o.Metrics.InsertSeconds.Observe(time.Since(start).Seconds())
		o.Metrics.BatchSize.Observe(float64(len(rows)))
		o.Metrics.EventsInserted.Add(float64(len(rows)))
	}
	if o.AfterInsert != nil {
		if err := o.AfterInsert(rows); err != nil {
			res.err = fmt.Errorf("%w: %v", errCrash, err)
			return res
		}
	}
	res.stored, res.committed = rows, committed
	return res
}
