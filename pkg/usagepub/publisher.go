// Package usagepub publishes usage events to the JetStream usage stream
// without ever making the request path wait for NATS.
//
// Record encodes the event and hands it to a bounded queue. One goroutine
// (the owner) gathers queued events into batches and publishes one batch
// at a time as a JetStream fast batch: every event is its own message with
// Nats-Msg-Id set to the event id, and the server answers the whole batch
// with one PubAck instead of one per event (a server or stream without
// fast batches gets each event acknowledged on its own instead). A new
// batch leaves when the previous one is acknowledged and one linger
// (default 5ms) has passed, or at once when it is full, so a busy replica
// sends a few large batches a second and a quiet one sends each event
// straight away. Whenever NATS is unreachable or slow (not connected, a
// publish fails or is refused, acks time out, the queue overflows) events
// go to an on-disk spool (package spool) instead. Once NATS is back, the
// owner replays the spool in order, a batch at a time, acknowledging the
// spool only after JetStream stored all of the batch, taking turns with
// new events. Re-sends are deduplicated by the stream's duplicate window,
// so the guarantee is: an event reaches the stream at least once unless
// the spool was full, and the stream stores it once.
//
// The stream belongs to the aggregator, which creates and updates it; a
// publisher only checks that it exists (reading its info, all a proxy's
// NATS user may do with it) before it sends, and spools meanwhile, as
// while NATS is down, logging once that the stream is missing.
// WithCreateStream makes the publisher create it instead, for tests and
// benchmarks that run no aggregator.
package usagepub

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/droverhq/drover/pkg/spool"
	"github.com/droverhq/drover/pkg/usage"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// item is one encoded event.
type item struct {
	id   string
	data []byte
}

// Publisher is a usage.Sink that publishes to JetStream, spooling to disk
// while it cannot.
type Publisher struct {
	nc  *nats.Conn
	js  jetstream.JetStream
	o   options
	sp  *spool.Spool
	log *slog.Logger
	m   *metrics

	queue   chan item
	inbox   string         // reply subjects of this publisher's batches: <inbox>.<batch id>...
	replies chan *nats.Msg // JetStream's answers on them
	sub     *nats.Subscription

	// closeMu guards closed; Record holds it shared while it enqueues so
	// that Close knows no enqueue races the final drain.
	closeMu sync.RWMutex
	closed  bool

	stop      chan struct{} // closed by Close: drain and stop
	abort     chan struct{} // closed when Close's context ends: spool, don't wait
	ownerDone chan struct{}
	statusCh  chan nats.Status

	published, spooled, replayed, dropped atomic.Uint64
	// queued counts events in the queue or gathered for the next batch;
	// pendingAcks those in the batch in flight.
	queued, pendingAcks atomic.Int64
	online, streamReady atomic.Bool
	lastFullWarn        atomic.Int64
	streamChecks        atomic.Int64 // for tests: how often the stream was looked for
}

// New starts a publisher on nc. nc may still be connecting (connect with
// nats.RetryOnFailedConnect(true) and nats.MaxReconnects(-1)): until it
// connects, events are spooled. New opens the spool (which fails if
// another process holds it) and returns without waiting for NATS.
func New(nc *nats.Conn, opts ...Option) (*Publisher, error) {
	if nc == nil {
		return nil, errors.New("usagepub: nil NATS connection")
	}
	o := defaultOptions()
	for _, opt := range opts {
		opt(&o)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, fmt.Errorf("usagepub: creating JetStream context: %w", err)
	}
	sp, err := spool.Open(o.spoolDir, spool.Options{MaxBytes: o.spoolMaxBytes,
		SyncInterval: o.syncInterval, Logger: o.log})
	if err != nil {
		return nil, fmt.Errorf("usagepub: %w", err)
	}
	p := &Publisher{
		nc: nc, js: js, o: o, sp: sp, log: o.log.With("component", "usagepub"),
		queue:     make(chan item, o.queueSize),
		inbox:     nc.NewInbox(),
		replies:   make(chan *nats.Msg, 2*o.batchSize+64),
		stop:      make(chan struct{}),
		abort:     make(chan struct{}),
		ownerDone: make(chan struct{}),
	}
	// Overflowing replies are dropped by the client (a slow consumer); the
	// batch then times out and is spooled, nothing is lost.
	if p.sub, err = nc.ChanSubscribe(p.inbox+".>", p.replies); err != nil {
		sp.Close()
		return nil, fmt.Errorf("usagepub: subscribing to JetStream replies: %w", err)
	}
	p.statusCh = nc.StatusChanged(nats.CONNECTED, nats.DISCONNECTED, nats.RECONNECTING)
	if p.m, err = newMetrics(p, o.reg); err != nil {
		nc.RemoveStatusListener(p.statusCh)
		p.sub.Unsubscribe() //nolint:errcheck // failing anyway
		sp.Close()
		return nil, err
	}
	if n := sp.Stats().Pending; n > 0 {
		p.log.Info("spool holds events from a previous run; they will be replayed", "events", n)
	}
	go p.run()
	return p, nil
}

// Record queues ev for publishing. It never waits for NATS: when the queue
// is full it appends ev to the spool (a mutex'd write to the page cache,
// microseconds; fsync happens in the background in batches). It fills in
// ev.ID and ev.Schema when they are empty.
func (p *Publisher) Record(ev usage.Event) {
	if ev.ID == "" {
		ev.ID = usage.NewID()
	}
	if ev.Schema == "" {
		ev.Schema = usage.SchemaVersion
	}
	it := item{id: ev.ID, data: usage.AppendJSON(make([]byte, 0, 512), &ev)}
	// The read lock is held through the spill too, so that an event
	// accepted before Close began is in the queue or the spool before Close
	// drains and closes them.
	p.closeMu.RLock()
	defer p.closeMu.RUnlock()
	if !p.closed {
		p.queued.Add(1)
		select {
		case p.queue <- it:
			return
		default:
		}
		p.queued.Add(-1)
		p.warnOverflow()
	}
	p.spoolItems([]item{it})
}

func (p *Publisher) warnOverflow() {
	now := time.Now().UnixNano()
	last := p.lastFullWarn.Load()
	if now-last > int64(10*time.Second) && p.lastFullWarn.CompareAndSwap(last, now) {
		p.log.Warn("usage queue full; spooling events directly", "queue_size", p.o.queueSize)
	}
}

// spoolItems appends items to the spool; what does not fit is dropped and
// counted.
func (p *Publisher) spoolItems(items []item) {
	recs := make([][]byte, len(items))
	for i, it := range items {
		recs[i] = encodeRecord(it)
	}
	n, err := p.sp.Append(recs...)
	p.spooled.Add(uint64(n))
	if lost := len(items) - n; lost > 0 {
		p.dropped.Add(uint64(lost))
		p.log.Warn("usage events dropped: spool cannot take them", "events", lost, "err", err)
	}
}

// encodeRecord frames an item for the spool: uvarint id length, id, event.
func encodeRecord(it item) []byte {
	b := make([]byte, 0, binary.MaxVarintLen64+len(it.id)+len(it.data))
	b = binary.AppendUvarint(b, uint64(len(it.id)))
	b = append(b, it.id...)
	return append(b, it.data...)
}

func decodeRecord(b []byte) (item, error) {
	n, k := binary.Uvarint(b)
	if k <= 0 || uint64(len(b)-k) < n {
		return item{}, errors.New("malformed spool record")
	}
	return item{id: string(b[k : k+int(n)]), data: b[k+int(n):]}, nil
}

// Close stops accepting events, publishes or spools everything queued,
// waits for pending acks (spooling the events whose publish fails), fsyncs
// the spool and returns. If ctx ends first, whatever is still queued or
// unacknowledged is spooled (it may then be sent twice, which the stream
// deduplicates) and Close returns once the spool is synced: nothing is
// lost either way. Every Record that began before Close is published or
// spooled; Records after Close began go straight to the spool while it is
// still open and are counted as dropped after that.
func (p *Publisher) Close(ctx context.Context) error {
	p.closeMu.Lock()
	if p.closed {
		p.closeMu.Unlock()
		return nil
	}
	p.closed = true
	p.closeMu.Unlock()

	close(p.stop)
	select {
	case <-p.ownerDone:
	case <-ctx.Done():
		p.log.Warn("usage publisher close deadline reached; spooling what is left", "err", ctx.Err())
		close(p.abort)
		<-p.ownerDone
	}
	p.nc.RemoveStatusListener(p.statusCh)
	p.sub.Unsubscribe() //nolint:errcheck // the connection may be gone; nothing more is read
	if err := p.sp.Close(); err != nil {
		return fmt.Errorf("usagepub: closing spool: %w", err)
	}
	p.m.unregister()
	return nil
}

// Stats is a snapshot for tests and /health.
type Stats struct {
	NATSConnected bool `json:"nats_connected"`
	// Publishing is false while new events go to the spool.
	Publishing  bool `json:"publishing"`
	StreamReady bool `json:"stream_ready"`
	QueueDepth  int  `json:"queue_depth"`
	// PendingAcks is the number of events in the batch in flight.
	PendingAcks int64 `json:"pending_acks"`
	// SpooledPending is the number of events in the spool not yet
	// acknowledged by JetStream; SpoolBytes is the spool's size on disk.
	SpooledPending uint64 `json:"spooled_pending"`
	SpoolBytes     int64  `json:"spool_bytes"`
	// Counters since New. Published counts direct publishes acked by
	// JetStream; Replayed counts spooled events acked on replay; Dropped
	// counts events lost because the spool was full (or closed).
	Published uint64 `json:"published"`
	Spooled   uint64 `json:"spooled"`
	Replayed  uint64 `json:"replayed"`
	Dropped   uint64 `json:"dropped"`
}

// Stats returns a snapshot.
func (p *Publisher) Stats() Stats {
	ss := p.sp.Stats()
	return Stats{
		NATSConnected:  p.nc.IsConnected(),
		Publishing:     p.online.Load(),
		StreamReady:    p.streamReady.Load(),
		QueueDepth:     int(p.queued.Load()),
		PendingAcks:    p.pendingAcks.Load(),
		SpooledPending: ss.Pending,
		SpoolBytes:     ss.Bytes,
		Published:      p.published.Load(),
		Spooled:        p.spooled.Load(),
		Replayed:       p.replayed.Load(),
		Dropped:        p.dropped.Load(),
	}
}
