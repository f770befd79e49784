// Package ingest moves usage events from JetStream into ClickHouse exactly
// once. docs/pipeline.md explains the design; in short:
//
//   - every partition usage.v1.<p> has at most one writer, the instance
//     holding its lease (package lease);
//   - a writer starts each ownership term by reading the partition's
//     committed stream sequence from ClickHouse and recreating the partition's
//     durable consumer to start right after it;
//   - one goroutine (the batcher) owns the batch: it skips sequences already
//     stored or held, inserts one block carrying (partition, seq) per row, and
//     acknowledges only after the insert returned. The block feeds
//     token_usage_minute and usage_progress through materialized views, so
//     data and progress are committed together.
package ingest

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/droverhq/drover/pkg/chstore"
	"github.com/droverhq/drover/pkg/config"
	"github.com/droverhq/drover/pkg/usage"
	"github.com/droverhq/drover/services/aggregator/internal/lease"
	"github.com/droverhq/drover/services/aggregator/internal/metrics"
)

// Options configure an Aggregator. JS, Conn, Store, Leases and Metrics are
// required; zero durations and sizes take the defaults noted.
type Options struct {
	JS      jetstream.JetStream
	Conn    *nats.Conn // for dead letters
	Store   *chstore.Store
	Leases  *lease.Table
	Metrics *metrics.Metrics
	Logger  *slog.Logger

	// Stream and Partitions default to config.DefaultNATS's; BatchSize,
	// FlushInterval, FetchBatch, LeaseTTL, DeadLetterSubject, RetryMax and
	// ShutdownTimeout to config.DefaultAggregator's.
	Stream            string
	Partitions        int
	BatchSize         int
	FlushInterval     time.Duration
	FetchBatch        int
	LeaseTTL          time.Duration
	DeadLetterSubject string
	RetryMin          time.Duration // default 100ms
	RetryMax          time.Duration
	ShutdownTimeout   time.Duration
	// AckWait is how long JetStream waits for an ack before redelivering
	// (default 2m). Redeliveries are harmless, only wasteful.
	AckWait time.Duration

	// AfterInsert, for tests, runs after an insert returned and before any of
	// its messages is acknowledged. Returning an error stops the aggregator at
	// once as if it were killed: nothing acknowledged, nothing flushed, no
	// lease released.
	AfterInsert func(rows []chstore.EventRow) error
}

// Aggregator consumes the usage stream into ClickHouse. Create it with New
// and call Run once.
type Aggregator struct {
	o Options

	in   chan chunk   // fetchers → batcher
	cmds chan command // lease keeper and Run → batcher

	// validUntil[p] is the UnixNano instant after which this instance must
	// not insert rows of partition p: a margin before its lease can expire
	// in the KV bucket. Written by the lease keeper, read by the batcher.
	validUntil []atomic.Int64

	// lastErr is the last ClickHouse error (nil after a success), for /health.
	lastErr atomic.Pointer[error]
	// crashed is set when AfterInsert asked for a crash.
	crashed atomic.Bool
}

// DefaultDeadLetterSubject receives undecodable usage messages.
const DefaultDeadLetterSubject = config.DefaultDeadLetterSubject

const (
	defaultRetryMin = 100 * time.Millisecond
	defaultAckWait  = 2 * time.Minute
)

// New checks the options and fills defaults.
func New(o Options) (*Aggregator, error) {
	if o.JS == nil || o.Conn == nil || o.Store == nil || o.Leases == nil || o.Metrics == nil {
		return nil, errors.New("ingest: JS, Conn, Store, Leases and Metrics are required")
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	n, d := config.DefaultNATS(), config.DefaultAggregator()
	setDefault(&o.Stream, n.Stream)
	setDefault(&o.Partitions, n.Partitions)
	setDefault(&o.DeadLetterSubject, d.DeadLetterSubject)
	setDefault(&o.BatchSize, d.BatchSize)
	setDefault(&o.FetchBatch, d.FetchBatch)
	setDefault(&o.FlushInterval, d.FlushInterval)
	setDefault(&o.LeaseTTL, d.LeaseTTL)
	setDefault(&o.RetryMin, defaultRetryMin)
	setDefault(&o.RetryMax, d.RetryMax)
	setDefault(&o.ShutdownTimeout, d.ShutdownTimeout)
	setDefault(&o.AckWait, defaultAckWait)
	if strings.HasPrefix(o.DeadLetterSubject, config.UsageSubjectPrefix) || o.DeadLetterSubject+"." == config.UsageSubjectPrefix {
		return nil, fmt.Errorf("ingest: dead-letter subject %q must not be under %s>", o.DeadLetterSubject, config.UsageSubjectPrefix)
	}
	return &Aggregator{
		o:          o,
		in:         make(chan chunk, o.BatchSize/maxChunk+2*o.Partitions),
		cmds:       make(chan command),
		validUntil: make([]atomic.Int64, o.Partitions),
	}, nil
}

func setDefault[T comparable](p *T, v T) {
	var zero T
	if *p == zero {
		*p = v
	}
}

// Healthy reports the last ClickHouse error, nil when the last operation
// succeeded.
func (a *Aggregator) Healthy() error {
	if p := a.lastErr.Load(); p != nil {
		return *p
	}
	return nil
}

func (a *Aggregator) noteCH(err error) {
	if err == nil {
		a.lastErr.Store(nil)
		return
	}
	a.lastErr.Store(&err)
}

// errCrash is what Run returns after AfterInsert asked for a crash.
var errCrash = errors.New("ingest: simulated crash after insert")

// Run consumes until ctx ends, then flushes what it holds (bounded by
// ShutdownTimeout), releases its leases and returns nil. It returns an error
// only if it could not run or a test hook simulated a crash.
func (a *Aggregator) Run(ctx context.Context) error {
	// Fetchers stop with ctx; the batcher and the lease keeper outlive it,
	// so that the final flush happens under leases still held.
	fetchCtx, stopFetch := context.WithCancel(ctx)
	defer stopFetch()
	leaseCtx, stopLeases := context.WithCancel(context.WithoutCancel(ctx))
	defer stopLeases()
	batchCtx, stopBatch := context.WithCancel(context.WithoutCancel(ctx))
	defer stopBatch()

	batchDone := make(chan error, 1)
	go func() { batchDone <- a.batchLoop(batchCtx) }()
	fetchersStopped := make(chan struct{})
	leaseDone := make(chan struct{})
	go func() {
		defer close(leaseDone)
		newLeaseKeeper(a).run(leaseCtx, fetchCtx, fetchersStopped)
	}()

	select {
	case <-ctx.Done():
	case err := <-batchDone:
		// Only a simulated crash ends the batcher early: abandon everything.
		a.crashed.Store(true)
		stopFetch()
		stopLeases()
		<-leaseDone
		return err
	}
	stopFetch()
	<-fetchersStopped

	final := finalCmd{deadline: time.Now().Add(a.o.ShutdownTimeout), done: make(chan error, 1)}
	var flushErr error
	select {
	case a.cmds <- final:
		flushErr = <-final.done
	case err := <-batchDone:
		a.crashed.Store(true)
		stopLeases()
		<-leaseDone
		return err
	}
	stopBatch()
	<-batchDone
	if errors.Is(flushErr, errCrash) {
		a.crashed.Store(true)
		stopLeases()
		<-leaseDone
		return flushErr
	}
	if flushErr != nil {
		// What was held stays unacknowledged: the next owner of each
		// partition starts from the committed sequence, so nothing is lost.
		a.o.Logger.Warn("final flush failed; unflushed events stay in the stream", "err", flushErr)
	}
	stopLeases()
	<-leaseDone
	return nil
}

// chunk is what a fetcher hands the batcher: either the start of an
// ownership term (start=true) or a run of messages of one term, in delivery
// order.
type chunk struct {
	p         int
	term      uint64
	start     bool
	committed uint64 // with start

	items []fetched
}

// fetched is one message of a chunk. ev is decoded only when seq is new to
// the fetcher; a redelivery carries just its sequence.
type fetched struct {
	msg       jetstream.Msg
	seq       uint64
	delivered uint64
	ev        usage.Event
}

// command is an instruction to the batcher, handled between inserts.
type command interface{ isCommand() }

// dropCmd ends ownership term term of partition p. With flush, the batcher
// first tries to insert what it holds; either way, whatever of p is still
// held afterwards is forgotten without an ack (the next owner reads it again).
type dropCmd struct {
	p     int
	term  uint64
	flush bool
	done  chan struct{}
}

// finalCmd flushes everything, retrying until deadline, then the batcher
// waits for its context to end.
type finalCmd struct {
	deadline time.Time
	done     chan error
}

func (dropCmd) isCommand()  {}
func (finalCmd) isCommand() {}

// sendCmd delivers c unless ctx ends first.
func (a *Aggregator) sendCmd(ctx context.Context, c command) bool {
	select {
	case a.cmds <- c:
		return true
	case <-ctx.Done():
		return false
	}
}

// fetcherHandle is one running fetcher, owned by the lease keeper.
type fetcherHandle struct {
	term   uint64
	cancel context.CancelFunc
	done   chan struct{}
}

func (h *fetcherHandle) stop() {
	h.cancel()
	<-h.done
}
