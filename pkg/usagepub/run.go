package usagepub

import (
	"context"
	"errors"
	"time"

	"github.com/droverhq/drover/pkg/spool"
	"github.com/droverhq/drover/pkg/usage"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// pending is one entry of the owner → acker pipe: a publish awaiting its
// ack, or (marker != nil) the end of a replay batch.
type pending struct {
	fut       jetstream.PubAckFuture
	it        item
	sent      time.Time
	fromSpool bool

	marker *spool.Pos
	n      int  // events in the replay batch
	failed bool // a publish of the batch failed before it was sent
}

var errAborted = errors.New("close deadline reached")

// owner is the state of the goroutine that runs the publisher; nothing
// else touches it.
type owner struct {
	online     bool
	retryAt    time.Time
	replaying  bool // a replay batch is in flight
	draining   bool // replay episode in progress, for logging
	readPos    spool.Pos
	replayedAt uint64
}

const drainBatch = 256

// run owns publishing: it takes events off the queue, publishes or spools
// them, watches the connection and replays the spool.
func (p *Publisher) run() {
	defer close(p.ownerDone)
	defer close(p.acks)
	st := &owner{readPos: p.sp.Acked()}
	tick := time.NewTicker(p.o.checkInterval)
	defer tick.Stop()
	p.tryOnline(st)
	batch := make([]item, 0, drainBatch)
	for {
		if st.online && !st.replaying {
			p.replayBatch(st)
		}
		select {
		case it := <-p.queue:
			batch = p.take(append(batch[:0], it))
			p.handle(st, batch)
		case <-tick.C:
			p.checkConn(st)
		case <-p.statusCh:
			p.checkConn(st)
		case <-p.ackFailed:
			p.goOffline(st, "publish acks failing or timing out")
		case ok := <-p.replayDone:
			p.replayFinished(st, ok)
		case <-p.stop:
			p.drain(st)
			return
		}
	}
}

// take adds whatever else is queued, up to drainBatch, without waiting.
func (p *Publisher) take(batch []item) []item {
	for len(batch) < drainBatch {
		select {
		case it := <-p.queue:
			batch = append(batch, it)
		default:
			return batch
		}
	}
	return batch
}

// handle publishes a batch of new events, or spools it while offline.
func (p *Publisher) handle(st *owner, batch []item) {
	for i, it := range batch {
		if !st.online {
			p.spoolItems(batch[i:])
			return
		}
		if err := p.publish(it, false); err != nil {
			p.spoolItems([]item{it})
			p.goOffline(st, "publish failed: "+err.Error())
		}
	}
}

// drain empties the queue after Close: publish while online, spool the
// rest (all of it once the close deadline passes).
func (p *Publisher) drain(st *owner) {
	batch := make([]item, 0, drainBatch)
	for {
		batch = p.take(batch[:0])
		if len(batch) == 0 {
			return
		}
		select {
		case <-p.abort:
			st.online = false
		default:
		}
		p.handle(st, batch)
	}
}

func (p *Publisher) publish(it item, fromSpool bool) error {
	msg := &nats.Msg{
		Subject: usage.Subject(it.id, p.o.partitions),
		Data:    it.data,
		Header:  nats.Header{jetstream.MsgIDHeader: []string{it.id}},
	}
	sent := time.Now()
	fut, err := p.js.PublishMsgAsync(msg, jetstream.WithStallWait(p.o.stallWait))
	if err != nil {
		return err
	}
	p.pendingAcks.Add(1)
	p.acks <- pending{fut: fut, it: it, sent: sent, fromSpool: fromSpool}
	return nil
}

// checkConn follows the connection: offline when it drops, back online
// (after the retry interval) when it is up.
func (p *Publisher) checkConn(st *owner) {
	if !p.nc.IsConnected() {
		p.goOffline(st, "NATS disconnected")
		return
	}
	p.tryOnline(st)
}

func (p *Publisher) tryOnline(st *owner) {
	if st.online || time.Now().Before(st.retryAt) || !p.nc.IsConnected() {
		return
	}
	if !p.streamReady.Load() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		_, err := usage.EnsureStream(ctx, p.js, p.o.stream)
		cancel()
		if err != nil {
			st.retryAt = time.Now().Add(p.o.retryInterval)
			p.log.Warn("usage stream not ready; spooling events", "err", err)
			return
		}
		p.streamReady.Store(true)
	}
	st.online = true
	p.online.Store(true)
	p.log.Info("publishing usage events to NATS", "spooled_pending", p.sp.Stats().Pending)
}

func (p *Publisher) goOffline(st *owner, reason string) {
	if !st.online {
		return
	}
	st.online = false
	p.online.Store(false)
	// After a failure the stream may be gone (a wiped server): ensure it
	// again before going back online.
	p.streamReady.Store(false)
	st.retryAt = time.Now().Add(p.o.retryInterval)
	p.log.Warn("NATS unavailable; spooling usage events to disk", "reason", reason, "dir", p.o.spoolDir)
}

// replayBatch sends the next batch from the spool, if any. Only one batch
// is in flight; the acker acknowledges it in the spool once JetStream has
// acknowledged all of it.
func (p *Publisher) replayBatch(st *owner) {
	if p.sp.Stats().Pending == 0 {
		return
	}
	recs, next, err := p.sp.Read(st.readPos, p.o.replayBatch)
	if err != nil {
		p.log.Warn("reading usage spool", "err", err)
		return
	}
	if len(recs) == 0 {
		return
	}
	if !st.draining {
		st.draining = true
		st.replayedAt = p.replayed.Load()
		p.log.Info("replaying spooled usage events", "pending", p.sp.Stats().Pending)
	}
	failed := false
	for _, r := range recs {
		it, err := decodeRecord(r)
		if err != nil {
			p.dropped.Add(1)
			p.log.Error("undecodable spool record skipped", "err", err)
			continue
		}
		if err := p.publish(it, true); err != nil {
			failed = true
			p.goOffline(st, "replay publish failed: "+err.Error())
			break
		}
	}
	p.acks <- pending{marker: &next, n: len(recs), failed: failed}
	st.readPos = next
	st.replaying = true
}

func (p *Publisher) replayFinished(st *owner, ok bool) {
	st.replaying = false
	if !ok {
		// Re-send from the last acknowledged position; duplicates are
		// dropped by the stream.
		st.readPos = p.sp.Acked()
		p.goOffline(st, "replay publish failed")
		return
	}
	if st.draining && p.sp.Stats().Pending == 0 {
		st.draining = false
		p.log.Info("spool replay finished", "replayed", p.replayed.Load()-st.replayedAt)
	}
}

// ackLoop waits for acks in publish order. Failed new events are spooled;
// a failed replay event fails its batch, which is then re-read.
func (p *Publisher) ackLoop() {
	defer close(p.ackerDone)
	batchFailed := false
	for pd := range p.acks {
		if pd.marker != nil {
			ok := !batchFailed && !pd.failed
			batchFailed = false
			if ok {
				if err := p.sp.Ack(*pd.marker); err != nil {
					p.log.Warn("acknowledging usage spool", "err", err)
					ok = false
				} else {
					p.replayed.Add(uint64(pd.n))
				}
			}
			p.replayDone <- ok // never blocks: one batch in flight, buffer 1
			continue
		}
		var err error
		select {
		case <-pd.fut.Ok():
		case err = <-pd.fut.Err():
		case <-p.abort:
			err = errAborted
		}
		p.pendingAcks.Add(-1)
		if err == nil {
			p.m.latency.Observe(time.Since(pd.sent).Seconds())
			if !pd.fromSpool {
				p.published.Add(1)
			}
			continue
		}
		if pd.fromSpool {
			batchFailed = true
		} else {
			p.spoolItems([]item{pd.it})
		}
		if err != errAborted {
			select {
			case p.ackFailed <- struct{}{}:
			default:
			}
		}
	}
}
