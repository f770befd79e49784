package ingest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/droverhq/drover/pkg/usage"
)

// ConsumerName is the durable consumer of partition p.
func ConsumerName(p int) string { return "drover-aggregator-p" + strconv.Itoa(p) }

// fetch runs one ownership term of partition p: it reads the committed
// sequence, recreates the consumer to start right after it, announces the
// term to the batcher and then feeds it decoded messages until ctx ends.
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
	var cons jetstream.Consumer
	if !a.retry(ctx, "creating consumer", func() (err error) {
		cons, err = a.recreateConsumer(ctx, p, committed+1)
		return err
	}) {
		return
	}
	log.Info("partition acquired", "committed_seq", committed)
	if !a.send(ctx, item{p: p, term: term, start: true, committed: committed}) {
		return
	}
	for ctx.Err() == nil {
		it, err := cons.Messages(jetstream.PullMaxMessages(a.o.FetchBatch))
		if err != nil {
			log.Warn("starting to pull", "err", err)
			sleep(ctx, time.Second)
			continue
		}
		stop := context.AfterFunc(ctx, it.Stop)
		a.pull(ctx, p, term, it)
		stop()
		it.Stop()
	}
}

// pull feeds the batcher from one message iterator until it fails or ctx
// ends.
func (a *Aggregator) pull(ctx context.Context, p int, term uint64, it jetstream.MessagesContext) {
	for {
		msg, err := it.Next()
		if err != nil {
			if ctx.Err() == nil && !errors.Is(err, jetstream.ErrMsgIteratorClosed) {
				a.o.Logger.Warn("pulling messages", "partition", p, "err", err)
				sleep(ctx, time.Second)
			}
			return
		}
		md, err := msg.Metadata()
		if err != nil {
			a.deadLetter(msg, 0, fmt.Errorf("reading message metadata: %w", err))
			continue
		}
		ev, err := Decode(msg.Data())
		if err != nil {
			a.deadLetter(msg, md.Sequence.Stream, err)
			continue
		}
		if !a.send(ctx, item{p: p, term: term, msg: msg, seq: md.Sequence.Stream, delivered: md.NumDelivered, ev: ev}) {
			return
		}
	}
}

func (a *Aggregator) send(ctx context.Context, it item) bool {
	select {
	case a.in <- it:
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
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       a.o.AckWait,
		MaxDeliver:    -1,
		MaxAckPending: a.o.BatchSize + 2*a.o.FetchBatch,
	})
	if err != nil {
		return nil, fmt.Errorf("creating consumer %s: %w", name, err)
	}
	return cons, nil
}

// deadLetter publishes an undecodable message to the dead-letter subject
// and acknowledges it, so that it never blocks its partition. If the
// publish fails the message is left for redelivery.
func (a *Aggregator) deadLetter(msg jetstream.Msg, seq uint64, cause error) {
	out := nats.NewMsg(a.o.DeadLetterSubject)
	out.Data = msg.Data()
	out.Header.Set("Drover-Error", cause.Error())
	out.Header.Set("Drover-Subject", msg.Subject())
	out.Header.Set("Drover-Stream-Seq", strconv.FormatUint(seq, 10))
	if err := a.o.Conn.PublishMsg(out); err != nil {
		a.o.Logger.Error("publishing dead letter", "subject", msg.Subject(), "seq", seq, "err", err)
		return
	}
	a.o.Metrics.DeadLettered.Inc()
	a.o.Logger.Warn("usage message dead-lettered", "subject", msg.Subject(), "seq", seq, "err", cause)
	_ = msg.Ack()
}

// Decode parses and checks one usage.v1 message.
func Decode(data []byte) (usage.Event, error) {
	var ev usage.Event
	if err := json.Unmarshal(data, &ev); err != nil {
		return ev, fmt.Errorf("decoding usage event: %w", err)
	}
	switch {
	case ev.Schema != usage.SchemaVersion:
		return ev, fmt.Errorf("usage event schema %q, want %q", ev.Schema, usage.SchemaVersion)
	case ev.ID == "":
		return ev, errors.New("usage event without id")
	case ev.Time.IsZero():
		return ev, errors.New("usage event without time")
	case ev.InputTokens != nil && *ev.InputTokens < 0, ev.OutputTokens != nil && *ev.OutputTokens < 0:
		return ev, errors.New("usage event with negative token counts")
	}
	return ev, nil
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
