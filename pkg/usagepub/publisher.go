// Package usagepub publishes usage events to the JetStream usage stream
// from a local write-ahead log, so that an event is durable on the replica
// before the request that produced it ends.
//
// Record encodes the event and appends it to the on-disk spool (package
// spool) before it returns: a kill -9 of the replica the next instant loses
// nothing, as the spool is replayed on start. Records from concurrent
// requests are written together (group commit): a Record that finds the
// spool idle appends its event itself; those that arrive while an append
// runs gather into the next commit, which a writer goroutine appends at
// once. An append is a copy into the spool's mapped segment on Linux (no
// system call), one write(2) elsewhere. Each caller waits for its
// commit's append, not for an fsync, which the spool does every sync
// interval (a host crash can lose at most that interval).
//
// One goroutine (the owner) reads the spool in order and publishes it, one
// batch at a time, as a JetStream fast batch: every event is its own
// message with Nats-Msg-Id set to the event id, and the server answers the
// whole batch with one PubAck instead of one per event (a server or stream
// without fast batches gets each event acknowledged on its own instead). A
// new batch leaves when the previous one is acknowledged and one linger
// (default 50ms) has passed, or at once when a batch's worth waits, so a
// busy replica sends a few large batches a second and a quiet one sends
// each event straight away. The spool's read position is persisted (Ack)
// at most once per sync interval: after a crash, at most that interval's
// published events are sent again. Whenever NATS is unreachable or slow
// (not connected, a publish fails or is refused, acks time out) the owner
// stops sending and the events wait in the spool; once NATS is back it
// goes on from the last acknowledged event. Re-sends are deduplicated by
// the stream's duplicate window, so the guarantee is: an event reaches the
// stream at least once unless the spool was full, and the stream stores it
// once.
//
// The stream belongs to the aggregator, which creates and updates it; a
// publisher only checks that it exists (reading its info, all a proxy's
// NATS user may do with it) before it sends, and holds events in the spool
// meanwhile, as while NATS is down, logging once that the stream is
// missing. WithCreateStream makes the publisher create it instead, for
// tests and benchmarks that run no aggregator.
package usagepub

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"

	"github.com/droverhq/drover/pkg/spool"
	"github.com/droverhq/drover/pkg/usage"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// item is one event read back from the spool.
type item struct {
	id   string
	data []byte
}

// Publisher is a usage.Sink that appends every event to the spool and
// publishes the spool to JetStream.
type Publisher struct {
	nc  *nats.Conn
	js  jetstream.JetStream
	o   options
	sp  *spool.Spool
	log *slog.Logger
	m   *metrics

	// qmu guards cur, the group commit being gathered, writing (a commit
	// is being written: by a caller that found the spool idle, or by the
	// writer goroutine, which writes what gathers meanwhile) and spare
	// (the last written commit's slice, for reuse).
	qmu     sync.Mutex
	cur     *commit
	writing bool
	spare   [][]byte
	kick    chan struct{} // wakes the writer: a caller left commits behind
	fresh   chan struct{} // wakes the owner: the spool has new records
	// wantFresh is set while the owner waits with nothing to send: only
	// then does a commit wake it (a busy owner looks at the spool when its
	// batch is acknowledged), so a busy replica wakes it once per batch.
	wantFresh  atomic.Bool
	writerStop chan struct{}
	writerDone chan struct{}

	// wmu orders appends against the owner going on or off line, so that
	// an event counts as spooled (held while NATS was away) exactly when it
	// was: holding changes and backlog moves under it.
	wmu sync.Mutex
	// holding is set while the owner cannot publish (NATS away, the stream
	// missing): events appended meanwhile count as spooled.
	holding atomic.Bool

	subjects []string // usage.v1.<p> for every partition p

	inbox   string         // reply subjects of this publisher's batches: <inbox>.<batch id>...
	replies chan *nats.Msg // JetStream's answers on them
	sub     *nats.Subscription

	// closeMu guards closed; Record holds it shared until its event is
	// written, so that Close knows no append races the final drain.
	closeMu sync.RWMutex
	closed  bool

	stop      chan struct{} // closed by Close: drain and stop
	abort     chan struct{} // closed when Close's context ends: don't wait
	ownerDone chan struct{}
	statusCh  chan nats.Status

	published, spooled, replayed, dropped atomic.Uint64
	// backlog is the record count (spool.Pos.N) below which events were
	// held while NATS was away or left by a previous run: publishing them
	// counts as replayed, not published.
	backlog atomic.Uint64
	// sentN is the owner's read position (spool.Pos.N): records past it
	// wait to be sent.
	sentN atomic.Uint64
	// pendingAcks counts the events in the batch in flight.
	pendingAcks         atomic.Int64
	online, streamReady atomic.Bool
	streamChecks        atomic.Int64 // for tests: how often the stream was looked for
}

// commit is one group commit: the records of every Record that arrived
// while the previous commit was being written, and the channel closed once
// they are.
type commit struct {
	recs [][]byte
	done chan struct{}
}

// New starts a publisher on nc. nc may still be connecting (connect with
// nats.RetryOnFailedConnect(true) and nats.MaxReconnects(-1)): until it
// connects, events wait in the spool. New opens the spool (which fails if
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
		cur:        &commit{done: make(chan struct{})},
		kick:       make(chan struct{}, 1),
		fresh:      make(chan struct{}, 1),
		writerStop: make(chan struct{}),
		writerDone: make(chan struct{}),
		inbox:      nc.NewInbox(),
		replies:    make(chan *nats.Msg, 2*o.batchSize+64),
		stop:       make(chan struct{}),
		abort:      make(chan struct{}),
		ownerDone:  make(chan struct{}),
	}
	for i := range max(o.partitions, 1) {
		p.subjects = append(p.subjects, usage.PartitionSubject(i))
	}
	// Overflowing replies are dropped by the client (a slow consumer); the
	// batch then times out and is sent again, nothing is lost.
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
	p.backlog.Store(sp.Written())
	p.sentN.Store(sp.Acked().N)
	go p.write()
	go p.run()
	return p, nil
}

// Record appends ev to the spool and returns once it is written (to the
// page cache: it survives a crash of the process; the spool fsyncs every
// sync interval). Concurrent Records share one write (group commit); a
// Record waits for its own commit's write, microseconds, never for NATS. It
// fills in ev.ID and ev.Schema when they are empty.
func (p *Publisher) Record(ev usage.Event) {
	if ev.ID == "" {
		ev.ID = usage.NewID()
	}
	if ev.Schema == "" {
		ev.Schema = usage.SchemaVersion
	}
	buf := recBufs.Get().(*[]byte)
	rec := encodeRecord((*buf)[:0], &ev)
	// The spool copies the record: once its commit is written the buffer
	// serves the next event (no allocation per event).
	defer func() {
		if cap(rec) <= maxPooledRec {
			*buf = rec
			recBufs.Put(buf)
		}
	}()
	// The read lock is held until the record is written, so that an event
	// accepted before Close began is in the spool before Close drains it.
	p.closeMu.RLock()
	defer p.closeMu.RUnlock()
	if p.closed {
		// The writer has stopped; the spool may still take it.
		p.append([][]byte{rec})
		return
	}
	p.qmu.Lock()
	c := p.cur
	c.recs = append(c.recs, rec)
	if p.writing {
		// A write is running: the one after it takes this commit.
		p.qmu.Unlock()
		<-c.done
		return
	}
	// The spool is idle: this caller writes its commit itself (no hand-off
	// to another goroutine and back), then leaves whatever gathered
	// meanwhile to the writer goroutine.
	p.writing = true
	p.commitLocked()
	more := len(p.cur.recs) > 0
	if !more {
		p.writing = false
	}
	p.qmu.Unlock()
	if more {
		select {
		case p.kick <- struct{}{}:
		default: // a wake-up is pending already
		}
	}
}

// commitLocked writes the commit gathered so far with one append, starting
// the next one, and releases its callers. The caller holds qmu and has set
// writing; qmu is released during the write, so the next commit fills
// meanwhile.
func (p *Publisher) commitLocked() {
	c := p.cur
	p.cur = &commit{done: make(chan struct{}), recs: p.spare}
	p.spare = nil
	p.qmu.Unlock()
	if len(c.recs) > 0 {
		p.append(c.recs)
	}
	close(c.done)
	if p.wantFresh.Load() {
		select {
		case p.fresh <- struct{}{}:
		default:
		}
	}
	clear(c.recs)
	p.qmu.Lock()
	p.spare = c.recs[:0]
}

// write is the writer goroutine: it writes the commits that gathered while
// another was being written, until none waits, then lets the next caller
// write its own.
func (p *Publisher) write() {
	defer close(p.writerDone)
	for {
		select {
		case <-p.kick:
		case <-p.writerStop:
			return
		}
		p.qmu.Lock()
		for len(p.cur.recs) > 0 {
			p.commitLocked()
		}
		p.writing = false
		p.qmu.Unlock()
	}
}

// append writes recs to the spool; what does not fit is dropped and
// counted. Records appended while NATS is away count as spooled.
func (p *Publisher) append(recs [][]byte) {
	p.wmu.Lock()
	n, err := p.sp.Append(recs...)
	if p.holding.Load() {
		p.spooled.Add(uint64(n))
		p.backlog.Store(p.sp.Written())
	}
	p.wmu.Unlock()
	if lost := len(recs) - n; lost > 0 {
		p.dropped.Add(uint64(lost))
		p.log.Warn("usage events dropped: spool cannot take them", "events", lost, "err", err)
	}
}

// recBufs holds the buffers events are encoded into; one larger than
// maxPooledRec (an event with unusually long names) is left to the GC.
var recBufs = sync.Pool{New: func() any { b := make([]byte, 0, 512); return &b }}

const maxPooledRec = 4 << 10

// encodeRecord appends ev's spool record to b: uvarint id length, id,
// event.
func encodeRecord(b []byte, ev *usage.Event) []byte {
	b = binary.AppendUvarint(b, uint64(len(ev.ID)))
	b = append(b, ev.ID...)
	return usage.AppendJSON(b, ev)
}

// decodeRecord reads a spool record.
func decodeRecord(b []byte) (item, error) {
	n, k := binary.Uvarint(b)
	if k <= 0 || uint64(len(b)-k) < n {
		return item{}, errors.New("malformed spool record")
	}
	return item{id: string(b[k : k+int(n)]), data: b[k+int(n):]}, nil
}

// Close stops accepting events, publishes what the spool holds while NATS
// takes it, waits for pending acks, persists the read position, fsyncs the
// spool and returns. If ctx ends first, what is unpublished stays in the
// spool for the next start (what was in flight may then be sent twice,
// which the stream deduplicates): nothing is lost either way. Every Record
// that began before Close is in the spool; Records after Close began go
// straight to the spool while it is still open and are counted as dropped
// after that.
func (p *Publisher) Close(ctx context.Context) error {
	p.closeMu.Lock()
	if p.closed {
		p.closeMu.Unlock()
		return nil
	}
	p.closed = true
	p.closeMu.Unlock()
	// Every Record before Close is written: the writer has nothing left.
	close(p.writerStop)
	<-p.writerDone

	close(p.stop)
	select {
	case <-p.ownerDone:
	case <-ctx.Done():
		p.log.Warn("usage publisher close deadline reached; what is unpublished stays in the spool", "err", ctx.Err())
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
	// Publishing is false while events wait in the spool for NATS.
	Publishing  bool `json:"publishing"`
	StreamReady bool `json:"stream_ready"`
	// QueueDepth is the number of events in the spool not yet sent.
	QueueDepth int `json:"queue_depth"`
	// PendingAcks is the number of events in the batch in flight.
	PendingAcks int64 `json:"pending_acks"`
	// SpooledPending is the number of events in the spool whose
	// publication is not yet recorded in it (the read position is
	// persisted once per sync interval); SpoolBytes is the spool's size on
	// disk.
	SpooledPending uint64 `json:"spooled_pending"`
	SpoolBytes     int64  `json:"spool_bytes"`
	// Counters since New. Every event goes through the spool; Published
	// counts those JetStream acknowledged on their first sending, Spooled
	// those held while NATS was away (or whose batch failed), Replayed
	// those acknowledged after being held or left by a previous run;
	// Dropped counts events lost because the spool was full (or closed).
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
		QueueDepth:     int(ss.Written - min(p.sentN.Load(), ss.Written)),
		PendingAcks:    p.pendingAcks.Load(),
		SpooledPending: ss.Pending,
		SpoolBytes:     ss.Bytes,
		Published:      p.published.Load(),
		Spooled:        p.spooled.Load(),
		Replayed:       p.replayed.Load(),
		Dropped:        p.dropped.Load(),
	}
}
