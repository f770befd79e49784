package usagepub

import (
	"context"
	"encoding/json"
	"errors"
	"strconv"
	"strings"
	"time"

	"github.com/droverhq/drover/pkg/spool"
	"github.com/droverhq/drover/pkg/usage"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nuid"
)

// batch is what the owner has in flight: events sent together, awaiting
// JetStream's word on all of them.
type batch struct {
	id       string
	items    []item
	from     spool.Pos // the spool position of the batch's first event
	next     spool.Pos // the spool position after the batch
	sent     time.Time
	deadline time.Time
	acked    int // per-message mode: acks received so far
}

// owner is the state of the goroutine that runs the publisher; nothing
// else touches it.
type owner struct {
	online  bool
	retryAt time.Time
	perMsg  bool // the server or stream does not take fast batches

	inflight *batch
	lastSent time.Time

	// readPos is where the next batch is read; stored is the position
	// after the last batch JetStream stored (where reading goes on after a
	// failure); ackedAt is when the spool last persisted it, and ackDue
	// says stored moved since.
	readPos, stored spool.Pos
	ackedAt         time.Time
	ackDue          bool

	timer *time.Timer
	armed time.Time

	// streamWarned is the kind of stream problem last logged ("missing" or
	// "other"), so that a retry every second does not log every second.
	streamWarned string
}

// run owns publishing: it reads the spool in order, publishes one batch at
// a time and persists how far it got.
func (p *Publisher) run() {
	defer close(p.ownerDone)
	acked := p.sp.Acked()
	st := &owner{readPos: acked, stored: acked, perMsg: p.o.perMessage, timer: time.NewTimer(time.Hour), ackedAt: time.Now()}
	defer st.timer.Stop()
	tick := time.NewTicker(p.o.checkInterval)
	defer tick.Stop()
	p.tryOnline(st)
	stop, abort := p.stop, p.abort
	stopping := false
	for {
		p.next(st, stopping)
		p.ack(st, stopping)
		if stopping && st.inflight == nil && (!st.online || p.unread(st) == 0) {
			p.ack(st, true)
			return
		}
		// Wake on new records only when they would be sent at once; the
		// check after setting the flag catches a commit that came before
		// it (arm's timer then covers the linger).
		p.wantFresh.Store(st.online && st.inflight == nil)
		p.arm(st)
		select {
		case <-p.fresh:
		case m := <-p.replies:
			p.onReply(st, m)
		case <-st.timer.C:
			st.armed = time.Time{}
			if b := st.inflight; b != nil && !time.Now().Before(b.deadline) {
				p.fail(st, "JetStream acks timed out")
			}
		case <-tick.C:
			p.checkConn(st)
		case <-p.statusCh:
			p.checkConn(st)
		case <-stop:
			stop, stopping = nil, true
			// One more try at once, not after the retry interval: a
			// replica stopped soon after a failure (or soon after start,
			// before the aggregator made the stream) still publishes what
			// it holds if NATS takes it now.
			st.retryAt = time.Time{}
			p.tryOnline(st)
		case <-abort:
			p.fail(st, "close deadline reached")
			p.ack(st, true)
			return
		}
	}
}

// unread is the number of events in the spool after the read position.
func (p *Publisher) unread(st *owner) uint64 {
	w := p.sp.Written()
	return w - min(st.readPos.N, w)
}

// next sends the next batch when nothing is in flight: at once when a
// batch's worth waits, else one linger after the previous batch, so that
// a busy replica sends few large batches and a quiet one does not delay
// its events.
func (p *Publisher) next(st *owner, stopping bool) {
	if !st.online || st.inflight != nil {
		return
	}
	n := p.unread(st)
	if n == 0 {
		return
	}
	if n < uint64(p.o.batchSize) && !stopping && time.Now().Before(st.lastSent.Add(p.o.linger)) {
		return
	}
	p.readBatch(st)
}

// ack persists the read position JetStream has stored up to, at most once
// per sync interval (now, when forced): after a crash at most that
// interval's events are sent again, and the stream drops them as
// duplicates.
func (p *Publisher) ack(st *owner, force bool) {
	if !st.ackDue || (!force && time.Since(st.ackedAt) < p.o.syncInterval) {
		return
	}
	st.ackDue, st.ackedAt = false, time.Now()
	if err := p.sp.Ack(st.stored); err != nil {
		p.log.Warn("acknowledging usage spool", "err", err)
	}
}

// arm points the timer at the next moment the owner must act: the in-flight
// batch's deadline, the end of the linger, or the spool's next ack.
func (p *Publisher) arm(st *owner) {
	var at time.Time
	switch {
	case st.inflight != nil:
		at = st.inflight.deadline
	case st.online && p.unread(st) > 0:
		at = st.lastSent.Add(p.o.linger)
	}
	if st.ackDue {
		if due := st.ackedAt.Add(p.o.syncInterval); at.IsZero() || due.Before(at) {
			at = due
		}
	}
	if at.Equal(st.armed) {
		return
	}
	st.armed = at
	if at.IsZero() {
		st.timer.Stop()
		return
	}
	st.timer.Reset(time.Until(at))
}

// send publishes b. In batch mode every event is a message of one JetStream
// fast batch (the reply subject carries the batch id, the event's place in
// it and whether it starts, continues or commits the batch, gap mode
// "fail"); the server answers with one PubAck that counts the batch, and
// flow-control acks in between. In per-message mode each event gets its own
// PubAck. Either way each message carries Nats-Msg-Id = event id, so a
// re-send is deduplicated by the stream.
func (p *Publisher) send(st *owner, b *batch) {
	b.id = nuid.Next()
	b.sent = time.Now()
	b.deadline = b.sent.Add(p.o.ackTimeout)
	st.inflight = b
	st.lastSent = b.sent
	p.pendingAcks.Store(int64(len(b.items)))

	hdr := nats.Header{jetstream.MsgIDHeader: []string{""}}
	msg := nats.Msg{Header: hdr}
	reply := make([]byte, 0, len(p.inbox)+64)
	n := len(b.items)
	for i, it := range b.items {
		hdr[jetstream.MsgIDHeader][0] = it.id
		msg.Subject = p.subjects[usage.Partition(it.id, p.o.partitions)]
		msg.Data = it.data
		reply = append(append(append(reply[:0], p.inbox...), '.'), b.id...)
		if st.perMsg {
			reply = strconv.AppendInt(append(reply, '.'), int64(i+1), 10)
		} else {
			// <inbox>.<batch id>.<flow>.fail.<seq>.<op>.$FI
			op := fastAppend
			switch {
			case i == n-1:
				op = fastCommit
			case i == 0:
				op = fastStart
			}
			reply = strconv.AppendInt(append(reply, '.'), int64(n), 10)
			reply = append(reply, ".fail."...)
			reply = strconv.AppendInt(reply, int64(i+1), 10)
			reply = append(append(reply, '.', op), ".$FI"...)
		}
		msg.Reply = string(reply)
		if err := p.nc.PublishMsg(&msg); err != nil {
			p.fail(st, "publish failed: "+err.Error())
			return
		}
	}
}

// Fast batch operations, as the last token but one of the reply subject.
const (
	fastStart  byte = '0'
	fastAppend byte = '1'
	fastCommit byte = '2'
)

// reply is what JetStream answers on a batch's reply subjects: a PubAck
// (Type empty; Batch and Count set for a fast batch), or a fast-batch flow
// message of type "ack", "gap" or "err".
type reply struct {
	Type      string `json:"type"`
	Batch     string `json:"batch"`
	Count     int    `json:"count"`
	Duplicate bool   `json:"duplicate"`
	Error     *struct {
		Code        int    `json:"code"`
		ErrCode     int    `json:"err_code"`
		Description string `json:"description"`
	} `json:"error"`
}

// JetStream errors that mean the stream or server does not take fast
// batches: batch publish disabled, pattern invalid, batch id unknown.
func batchUnsupported(errCode int) bool { return errCode >= 10205 && errCode <= 10208 }

func (p *Publisher) onReply(st *owner, m *nats.Msg) {
	b := st.inflight
	// Replies to an earlier batch (one that timed out or failed) are stale.
	if b == nil || !strings.HasPrefix(m.Subject, p.inbox) || !strings.HasPrefix(m.Subject[len(p.inbox):], "."+b.id+".") {
		return
	}
	var r reply
	if err := json.Unmarshal(m.Data, &r); err != nil {
		p.fail(st, "undecodable JetStream reply: "+err.Error())
		return
	}
	switch {
	case r.Error != nil && !st.perMsg && batchUnsupported(r.Error.ErrCode):
		p.perMessage(st, r.Error.Description)
	case r.Error != nil:
		p.fail(st, "JetStream refused a publish: "+r.Error.Description)
	case r.Type == "ack":
		// Flow control: the server has persisted a prefix of the batch.
	case r.Type != "":
		p.fail(st, "JetStream reported a "+r.Type+" in a fast batch")
	case st.perMsg:
		if b.acked++; b.acked == len(b.items) {
			p.done(st)
		}
	case r.Batch == "":
		// A server without fast batches treats the reply subjects as plain
		// ones and acknowledges each message.
		p.perMessage(st, "the server acknowledges each message of a fast batch")
	case r.Count == len(b.items):
		p.done(st)
	default:
		p.fail(st, "JetStream committed "+strconv.Itoa(r.Count)+" of "+strconv.Itoa(len(b.items))+" events of a batch")
	}
}

// perMessage switches to one ack per event for good and sends the batch in
// flight again that way (what of it is stored already is deduplicated).
func (p *Publisher) perMessage(st *owner, why string) {
	st.perMsg = true
	p.log.Warn("JetStream does not take fast batches here; publishing each usage event with its own ack", "reason", why)
	b := st.inflight
	st.inflight = nil
	p.send(st, &batch{items: b.items, from: b.from, next: b.next})
}

// done settles a batch JetStream has stored in full.
func (p *Publisher) done(st *owner) {
	b := st.inflight
	st.inflight = nil
	p.pendingAcks.Store(0)
	p.m.latency.Observe(time.Since(b.sent).Seconds())
	p.m.batchSize.Observe(float64(len(b.items)))
	st.stored, st.ackDue = b.next, true
	// Events below the backlog mark were held while NATS was away (or left
	// by a previous run): they count as replayed.
	held := min(max(p.backlog.Load(), b.from.N), b.next.N) - b.from.N
	p.replayed.Add(held)
	p.published.Add(b.next.N - b.from.N - held)
}

// fail gives up on the in-flight batch: its events are read again from the
// spool once NATS is back. Some of them may be stored already; their
// re-send is deduplicated by the stream.
func (p *Publisher) fail(st *owner, reason string) {
	if st.inflight == nil {
		return
	}
	st.inflight = nil
	p.pendingAcks.Store(0)
	p.goOffline(st, reason)
}

// checkConn follows the connection: offline when it drops, back online
// (after the retry interval) when it is up.
func (p *Publisher) checkConn(st *owner) {
	if !p.nc.IsConnected() {
		p.fail(st, "NATS disconnected")
		p.goOffline(st, "NATS disconnected")
		return
	}
	p.tryOnline(st)
}

func (p *Publisher) tryOnline(st *owner) {
	if st.online || time.Now().Before(st.retryAt) {
		return
	}
	if !p.nc.IsConnected() {
		p.hold(st)
		return
	}
	if !p.streamReady.Load() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		p.streamChecks.Add(1)
		err := p.checkStream(ctx)
		cancel()
		if err != nil {
			st.retryAt = time.Now().Add(p.o.retryInterval)
			p.streamProblem(st, err)
			p.hold(st)
			return
		}
		st.streamWarned = ""
		p.streamReady.Store(true)
	}
	p.wmu.Lock()
	st.online = true
	p.online.Store(true)
	p.holding.Store(false)
	p.wmu.Unlock()
	p.log.Info("publishing usage events to NATS", "unsent", p.unread(st))
}

// checkStream makes sure the stream exists before events are sent: by
// reading its info (all a proxy's NATS user may do with it; the aggregator
// creates it) or, with WithCreateStream, by creating or updating it.
func (p *Publisher) checkStream(ctx context.Context) error {
	if p.o.createStream {
		_, err := usage.EnsureStream(ctx, p.js, p.o.stream)
		return err
	}
	_, err := p.js.Stream(ctx, p.o.stream.Name)
	return err
}

// streamProblem says once per kind of problem, until the stream is ready
// again, why events are being spooled; the publisher retries every retry
// interval meanwhile.
func (p *Publisher) streamProblem(st *owner, err error) {
	kind := "other"
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		kind = "missing"
	}
	if st.streamWarned == kind {
		return
	}
	st.streamWarned = kind
	if kind == "missing" {
		p.log.Error("usage stream "+p.o.stream.Name+" not found: is the aggregator running? Spooling usage events until it creates the stream",
			"stream", p.o.stream.Name, "dir", p.o.spoolDir)
		return
	}
	p.log.Warn("usage stream not ready; spooling events", "stream", p.o.stream.Name, "err", err)
}

// hold marks the events not stored yet, and those appended from now until
// the publisher is back online, as held in the spool while NATS is away:
// they count as spooled (once: what was held already is below the backlog
// mark), and as replayed when they are stored.
func (p *Publisher) hold(st *owner) {
	if p.holding.Load() {
		return
	}
	p.wmu.Lock()
	p.holding.Store(true)
	w := p.sp.Written()
	p.spooled.Add(w - min(max(st.stored.N, p.backlog.Load()), w))
	p.backlog.Store(w)
	p.wmu.Unlock()
}

func (p *Publisher) goOffline(st *owner, reason string) {
	if !st.online {
		return
	}
	st.online = false
	p.online.Store(false)
	p.hold(st)
	st.readPos = st.stored
	p.sentN.Store(st.readPos.N)
	// After a failure the stream may be gone (a wiped server): check it
	// again before going back online.
	p.streamReady.Store(false)
	st.retryAt = time.Now().Add(p.o.retryInterval)
	p.log.Warn("NATS unavailable; usage events wait in the spool", "reason", reason, "dir", p.o.spoolDir)
}

// readBatch sends the next batch from the spool, if any.
func (p *Publisher) readBatch(st *owner) {
	recs, next, err := p.sp.Read(st.readPos, p.o.batchSize)
	if err != nil {
		p.log.Warn("reading usage spool", "err", err)
		return
	}
	items := make([]item, 0, len(recs))
	for _, r := range recs {
		it, err := decodeRecord(r)
		if err != nil {
			p.dropped.Add(1)
			p.log.Error("undecodable spool record skipped", "err", err)
			continue
		}
		items = append(items, it)
	}
	from := st.readPos
	st.readPos = next
	p.sentN.Store(next.N)
	if len(items) == 0 {
		if len(recs) > 0 {
			// Nothing but torn records: move past them.
			st.stored, st.ackDue = next, true
		}
		return
	}
	p.send(st, &batch{items: items, from: from, next: next})
}
