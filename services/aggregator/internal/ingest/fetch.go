package ingest

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/droverhq/drover/pkg/config"
	"github.com/droverhq/drover/pkg/usage"
)

// ConsumerName is the durable consumer of partition p.
func ConsumerName(p int) string { return config.AggregatorConsumerPrefix + strconv.Itoa(p) }

// fetch runs one ownership term of partition p: it reads the committed
// sequence, recreates the consumer to start right after it, announces the
// term to the batcher and then feeds it decoded messages until ctx ends.
//
// The batcher relies on receiving, within a term, every stream sequence of
// p after committed exactly in order and without holes (it skips anything
// at or below the last sequence it holds as a duplicate). A message the
// server delivered but the fetcher never handed over (dropped with a
// stopped iterator, or lost in transit during a reconnect) would only come
// back as a redelivery after AckWait, behind newer ones, and be skipped as
// a duplicate. So whenever the run of deliveries breaks (the consumer
// sequence skips, or the iterator ends) the fetcher recreates the consumer
// right after the last sequence it handed over, instead of resuming on the
// old one.
func (a *Aggregator) fetch(ctx context.Context, p int, term uint64) {
	log := a.o.Logger.With("partition", p, "term", term)
	var committed uint64
	if !a.retry(ctx, "reading committed sequence", func() error {
		c, err := a.o.Store.Committed(ctx, []int{p})
		a.noteCH(err)
		committed = c[p]
		return err
	}) {
		return
	}
	log.Info("partition acquired", "committed_seq", committed)
	if !a.send(ctx, chunk{p: p, term: term, start: true, committed: committed}) {
		return
	}
	handed := committed // highest sequence handed to the batcher (or dead-lettered)
	for first := true; ctx.Err() == nil; first = false {
		if !first && !sleep(ctx, a.o.RetryMin) {
			return
		}
		var cons jetstream.Consumer
		if !a.retry(ctx, "creating consumer", func() (err error) {
			cons, err = a.recreateConsumer(ctx, p, handed+1)
			return err
		}) {
			return
		}
		it, err := cons.Messages(jetstream.PullMaxMessages(a.o.FetchBatch))
		if err != nil {
			log.Warn("starting to pull", "err", err)
			continue
		}
		stop := context.AfterFunc(ctx, it.Stop)
		handed = a.pull(ctx, p, term, it, handed)
		stop()
		it.Stop()
		if ctx.Err() == nil {
			log.Info("restarting the partition's consumer after the last event handed over", "seq", handed)
		}
	}
}

// maxChunk bounds the messages a fetcher hands the batcher at once.
const maxChunk = 512

// chunkWait is how long a fetcher waits for the next message before handing
// over what it has: under load messages are already buffered and chunks
// fill up; when idle, events go on at once.
const chunkWait = 50 * time.Microsecond

// pull feeds the batcher from one iterator of a consumer that starts right
// after handed, in chunks, until the iterator fails, the run of deliveries
// breaks, or ctx ends. It returns the highest sequence handed over.
func (a *Aggregator) pull(ctx context.Context, p int, term uint64, it jetstream.MessagesContext, handed uint64) uint64 {
	log := a.o.Logger.With("partition", p, "term", term)
	buf := make([]fetched, 0, maxChunk)
	flush := func() bool {
		if len(buf) == 0 {
			return true
		}
		ok := a.send(ctx, chunk{p: p, term: term, items: buf})
		buf = make([]fetched, 0, maxChunk)
		return ok
	}
	defer flush()     // what was read is contiguous; hand it over even when stopping
	next := uint64(1) // consumer sequence of the next delivery: a fresh consumer starts at 1
	for {
		var msg jetstream.Msg
		var err error
		if len(buf) == 0 {
			msg, err = it.Next()
		} else if msg, err = it.Next(jetstream.NextMaxWait(chunkWait)); errors.Is(err, nats.ErrTimeout) {
			if !flush() {
				return handed
			}
			continue
		}
		if err != nil {
			if ctx.Err() == nil && !errors.Is(err, jetstream.ErrMsgIteratorClosed) {
				log.Warn("pulling messages", "err", err)
			}
			return handed
		}
		md, err := msg.Metadata()
		if err != nil {
			log.Warn("message without JetStream metadata", "subject", msg.Subject(), "err", err)
			return handed
		}
		if md.Sequence.Consumer != next {
			// A delivery went missing (lost in transit in a reconnect):
			// start again after the last sequence handed over.
			log.Warn("gap in deliveries", "want_consumer_seq", next, "got_consumer_seq", md.Sequence.Consumer, "stream_seq", md.Sequence.Stream)
			return handed
		}
		next++
		seq := md.Sequence.Stream
		f := fetched{msg: msg, seq: seq, delivered: md.NumDelivered}
		if seq <= handed {
			// A redelivery of something handed over already: the batcher
			// only counts it.
			buf = append(buf, f)
		} else if f.ev, err = Decode(msg.Data()); err != nil {
			if !flush() || !a.deadLetter(msg, seq, err) {
				return handed // not dead-lettered: read it again
			}
			handed = seq
			continue
		} else {
			buf = append(buf, f)
			handed = seq
		}
		if len(buf) == maxChunk && !flush() {
			return handed
		}
	}
}

func (a *Aggregator) send(ctx context.Context, c chunk) bool {
	select {
	case a.in <- c:
		return true
	case <-ctx.Done():
		return false
	}
}

// recreateConsumer deletes p's durable consumer, with whatever the previous
// owner left pending on it, and creates it again at startSeq. ClickHouse,
// not the consumer, is the source of truth for where a partition is.
func (a *Aggregator) recreateConsumer(ctx context.Context, p int, startSeq uint64) (jetstream.Consumer, error) {
	name := ConsumerName(p)
	if err := a.o.JS.DeleteConsumer(ctx, a.o.Stream, name); err != nil && !errors.Is(err, jetstream.ErrConsumerNotFound) {
		return nil, fmt.Errorf("deleting consumer %s: %w", name, err)
	}
	cons, err := a.o.JS.CreateConsumer(ctx, a.o.Stream, jetstream.ConsumerConfig{
		Durable:       name,
		Description:   "drover-aggregator, partition " + strconv.Itoa(p),
		FilterSubject: usage.PartitionSubject(p),
		DeliverPolicy: jetstream.DeliverByStartSequencePolicy,
		OptStartSeq:   startSeq,
		// AckAll: the batcher acknowledges only the highest sequence of
		// each partition per stored batch. Acks never decide what is
		// stored (ClickHouse's committed sequence does, and the consumer
		// is recreated from it), they only spare redeliveries.
		AckPolicy:  jetstream.AckAllPolicy,
		AckWait:    a.o.AckWait,
		MaxDeliver: -1,
		// Room for a batch in flight, the largest next one and the
		// iterators' read-ahead: the limit only throttles a partition
		// that has all of them to itself.
		MaxAckPending: a.o.BatchSize + a.maxBatch() + 2*a.o.FetchBatch,
	})
	if err != nil {
		return nil, fmt.Errorf("creating consumer %s: %w", name, err)
	}
	return cons, nil
}

// deadLetter publishes an undecodable message to the dead-letter subject
// and acknowledges it, so that it never blocks its partition. It reports
// whether the message was published; if not, the caller reads it again.
func (a *Aggregator) deadLetter(msg jetstream.Msg, seq uint64, cause error) bool {
	out := nats.NewMsg(a.o.DeadLetterSubject)
	out.Data = msg.Data()
	out.Header.Set("Drover-Error", cause.Error())
	out.Header.Set("Drover-Subject", msg.Subject())
	out.Header.Set("Drover-Stream-Seq", strconv.FormatUint(seq, 10))
	if err := a.o.Conn.PublishMsg(out); err != nil {
		a.o.Logger.Error("publishing dead letter", "subject", msg.Subject(), "seq", seq, "err", err)
		return false
	}
	a.o.Metrics.DeadLettered.Inc()
	a.o.Logger.Warn("usage message dead-lettered", "subject", msg.Subject(), "seq", seq, "err", cause)
	_ = msg.Ack()
	return true
}

// retry runs f until it succeeds or ctx ends, with capped exponential
// backoff; it reports whether f succeeded.
func (a *Aggregator) retry(ctx context.Context, what string, f func() error) bool {
	backoff := a.o.RetryMin
	for {
		err := f()
		if err == nil {
			return true
		}
		if ctx.Err() != nil {
			return false
		}
		a.o.Logger.Warn(what+" failed; retrying", "retry_in", backoff, "err", err)
		if !sleep(ctx, backoff) {
			return false
		}
		backoff = min(backoff*2, a.o.RetryMax)
	}
}

func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}
