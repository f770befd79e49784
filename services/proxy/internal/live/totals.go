package live

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"sync"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/droverhq/drover/pkg/chstore"
	"github.com/droverhq/drover/pkg/config"
	"github.com/droverhq/drover/pkg/usage"
)

// tokenKey names one group of token totals.
type tokenKey struct{ Endpoint, Model, APIKey string }

// fleetTotals are the whole fleet's token totals, exact once ready, built
// without a consumer on the usage stream (only the aggregator has those):
//
//  1. A core NATS subscription to usage.live.> opens first. The stream
//     republishes there every message it stores, with its stream sequence
//     (Nats-Sequence) and the previous sequence of the same partition
//     (Nats-Last-Sequence), so every event stored from then on arrives.
//  2. The last sequence of every partition is read from the stream
//     (message gets, no consumer): everything before the subscription is
//     at or below it.
//  3. ClickHouse's sums are read with the committed sequence of every
//     partition they include (baseline).
//  4. What a partition holds before the subscription and ClickHouse not
//     yet (the aggregator's lag, or a dead-lettered tail) is read from the
//     stream by message gets, at most maxFill events; more than that and
//     the totals are not ready (the aggregator is down or far behind).
//  5. Every republished event above its partition's count so far (head) is
//     added; an event at or below it is in the sums already (or a
//     duplicate) and is skipped.
//
// A gap (an event whose partition's previous sequence is above the head:
// events in between never arrived), messages the subscription dropped, or
// a reconnect ends the build and a new one starts; until it is ready the
// previous totals are shown, frozen, with the reason.
type fleetTotals struct {
	sums       Sums // what is kept: the token totals, or another reader's sums
	store      *chstore.Store
	nc         *nats.Conn
	stream     string
	partitions int
	log        *slog.Logger
	// pending is the subscription's pending limit in messages; maxFill the
	// most events a build reads from the stream; check how often drops and
	// reconnects are looked for. Tests shorten them.
	pending int
	maxFill int
	check   time.Duration

	mu      sync.Mutex // guards the fields below and every build's fields
	shown   *tally     // the totals served; nil until a build is ready
	since   time.Time  // when shown's ClickHouse baseline was read
	reason  string     // why the totals are not (or no longer) current
	maxPart int        // highest partition seen on usage.live.>
	builds  int        // builds started, the first included
	filled  int        // events the last ready build read from the stream (ClickHouse lacked them)
}

// tally is one build's totals.
type tally struct {
	sums Tally
	head map[int]uint64 // per partition, the last stream sequence counted
	seq  uint64         // the highest stream sequence counted
}

// liveEvent is one republished message, parsed.
type liveEvent struct {
	part      int
	seq, last uint64
	ev        usage.Event
	valid     bool // what the aggregator stores (decode): it counts
}

const (
	// minCommittedPartitions is the fewest partitions read, so that a proxy
	// configured with fewer partitions than others still reads them all
	// (one seen beyond them is added on the next build).
	minCommittedPartitions = 64
	// baselineAttempts bounds reading a consistent ClickHouse baseline
	// while the aggregator keeps committing.
	baselineAttempts = 20
	// insertSettle is how long a baseline read waits between reading the
	// committed sequences and reading them again, for an insert caught
	// between its two views to finish.
	insertSettle = 100 * time.Millisecond
	// followRetryMin and followRetryMax bound the pause before a new build.
	followRetryMin = 500 * time.Millisecond
	followRetryMax = 30 * time.Second
	// maxBuffered bounds the events held while a build reads ClickHouse.
	maxBuffered = 1 << 20
	// Defaults of pending, maxFill and check.
	defaultPending = 1 << 20
	// pendingBytes bounds the subscription's pending messages in bytes.
	pendingBytes   = 256 << 20
	defaultMaxFill = 20000
	defaultCheck   = 250 * time.Millisecond
	// getTimeout bounds one message get.
	getTimeout = 5 * time.Second
)

// committedPartitions is the partitions read: at least
// minCommittedPartitions and every one seen so far.
func (f *fleetTotals) committedPartitions() []int {
	f.mu.Lock()
	n := max(f.partitions, minCommittedPartitions, f.maxPart+1)
	f.mu.Unlock()
	out := make([]int, n)
	for i := range out {
		out[i] = i
	}
	return out
}

// run keeps the totals current until ctx ends, building them again after
// any failure or gap.
func (f *fleetTotals) run(ctx context.Context) {
	if f.pending <= 0 {
		f.pending = defaultPending
	}
	if f.maxFill <= 0 {
		f.maxFill = defaultMaxFill
	}
	if f.check <= 0 {
		f.check = defaultCheck
	}
	wait := followRetryMin
	for ctx.Err() == nil {
		wasReady, err := f.follow(ctx)
		if ctx.Err() != nil {
			return
		}
		if wasReady {
			wait = followRetryMin
		}
		f.mu.Lock()
		if f.shown != nil {
			f.reason = "rebuilding (these are the last totals before): " + err.Error()
		} else {
			f.reason = err.Error()
		}
		f.mu.Unlock()
		f.log.Warn("fleet token totals: building again", "err", err, "in", wait)
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
		if !wasReady {
			wait = min(2*wait, followRetryMax)
		}
	}
}

// build is one subscription's state; its fields are guarded by f.mu.
type build struct {
	f      *fleetTotals
	buf    []liveEvent   // received before t is ready
	t      *tally        // once ready, what received events are added to
	broken error         // the first gap, once seen
	gap    chan struct{} // signalled when broken is set
	done   bool          // the build ended: ignore what still arrives
	// recv is the highest stream sequence received. The stream holds only
	// usage subjects and republishes all of them, in order, so received
	// sequences run on without a jump; a jump is a gap even when the
	// partition that lost an event stays quiet (its own check waits for
	// its next event).
	recv uint64
}

// receive takes one republished message (the subscription's callback).
func (b *build) receive(m *nats.Msg) {
	e, err := parseLive(m, b.f.stream)
	f := b.f
	f.mu.Lock()
	defer f.mu.Unlock()
	if b.done || b.broken != nil {
		return
	}
	if err != nil {
		// Only the stream publishes here (no user may): this is not one of
		// its messages, and counting or rebuilding on it would let anyone
		// who can publish steer the totals.
		f.log.Warn("fleet token totals: ignoring a message on usage.live", "subject", m.Subject, "err", err)
		return
	}
	f.maxPart = max(f.maxPart, e.part)
	prev := b.recv
	b.recv = max(b.recv, e.seq)
	switch {
	case prev != 0 && e.seq > prev+1:
		b.fail(fmt.Errorf("gap: stream sequences %d to %d never arrived", prev+1, e.seq-1))
	case b.t == nil && len(b.buf) >= maxBuffered:
		b.fail(fmt.Errorf("more than %d events arrived while reading clickhouse", maxBuffered))
	case b.t == nil:
		b.buf = append(b.buf, e)
	default:
		if err := b.t.add(e); err != nil {
			b.fail(err)
		}
	}
}

// fail records the build's first gap. Call with f.mu held.
func (b *build) fail(err error) {
	if b.broken == nil {
		b.broken = err
		b.gap <- struct{}{}
	}
}

// follow builds the totals and keeps them current until a gap or ctx
// ends. wasReady reports whether they were ready at some point.
func (f *fleetTotals) follow(ctx context.Context) (wasReady bool, err error) {
	b := &build{f: f, gap: make(chan struct{}, 1)}
	f.mu.Lock()
	f.builds++
	f.mu.Unlock()
	reconnects := f.nc.Stats().Reconnects
	sub, err := f.nc.Subscribe(config.UsageLiveSubjectPrefix+">", b.receive)
	if err != nil {
		return false, fmt.Errorf("subscribing to %s>: %w", config.UsageLiveSubjectPrefix, err)
	}
	defer func() {
		sub.Unsubscribe() //nolint:errcheck // the connection may be gone
		f.mu.Lock()
		b.done = true
		f.mu.Unlock()
	}()
	if err := sub.SetPendingLimits(f.pending, pendingBytes); err != nil {
		return false, fmt.Errorf("sizing the subscription: %w", err)
	}
	// Once the server has the subscription, every message stored after
	// reaches it.
	if err := f.nc.FlushTimeout(getTimeout); err != nil {
		return false, fmt.Errorf("subscribing to %s>: %w", config.UsageLiveSubjectPrefix, err)
	}
	parts := f.committedPartitions()
	last, streamLast, err := f.lastSeqs(ctx, parts)
	if err != nil {
		return false, err
	}
	sums, committed, err := f.baseline(ctx, parts)
	if err != nil {
		return false, fmt.Errorf("reading totals from clickhouse: %w", err)
	}

	// A partition's first event received names the partition's last
	// sequence before the subscription; for one without, the last sequence
	// read after subscribing bounds it.
	f.mu.Lock()
	before := maps.Clone(last)
	seen := map[int]bool{}
	for _, e := range b.buf {
		if !seen[e.part] {
			seen[e.part] = true
			before[e.part] = e.last
		}
	}
	f.mu.Unlock()
	t := &tally{sums: sums, head: make(map[int]uint64, len(parts))}
	for _, p := range parts {
		t.head[p] = committed[p]
		t.seq = max(t.seq, committed[p])
	}
	filled, err := f.fill(ctx, t, parts, before)
	if err != nil {
		return false, err
	}

	if err := lost(sub, f.nc, reconnects); err != nil {
		return false, err
	}
	f.mu.Lock()
	err = b.broken
	for _, e := range b.buf {
		if err != nil {
			break
		}
		err = t.add(e)
	}
	if err != nil {
		f.mu.Unlock()
		return false, err
	}
	b.buf, b.t = nil, t
	// Every sequence up to the stream's last when it was read is counted
	// or skipped by now, or arrives still in order; the next one after it
	// must arrive too.
	b.recv = max(b.recv, streamLast)
	f.shown, f.since, f.reason, f.filled = t, time.Now().UTC(), "", filled
	f.sums.Ready(t.sums)
	f.mu.Unlock()
	return true, f.watch(ctx, b, sub, reconnects)
}

// watch waits for the build's first gap, a drop or a reconnect.
func (f *fleetTotals) watch(ctx context.Context, b *build, sub *nats.Subscription, reconnects uint64) error {
	tick := time.NewTicker(f.check)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-b.gap:
			f.mu.Lock()
			err := b.broken
			f.mu.Unlock()
			return err
		case <-tick.C:
			if err := lost(sub, f.nc, reconnects); err != nil {
				return err
			}
		}
	}
}

// lost reports messages the subscription dropped (slow consumer) or may
// have missed (a reconnect since it was made).
func lost(sub *nats.Subscription, nc *nats.Conn, reconnects uint64) error {
	if n, err := sub.Dropped(); err != nil {
		return fmt.Errorf("reading the subscription's drops: %w", err)
	} else if n > 0 {
		return fmt.Errorf("gap: the subscription dropped %d messages (slow consumer)", n)
	}
	if nc.Stats().Reconnects != reconnects {
		return errors.New("gap: reconnected to NATS; events stored meanwhile were not received")
	}
	return nil
}

// add counts e unless it is counted already; an event whose partition's
// previous sequence is above the head means events in between were missed.
func (t *tally) add(e liveEvent) error {
	head, ok := t.head[e.part]
	if !ok {
		return fmt.Errorf("gap: partition %d was not read at the start; building again with it", e.part)
	}
	if e.seq <= head {
		return nil // in ClickHouse's sums, read from the stream, or a duplicate
	}
	if e.last > head {
		return fmt.Errorf("gap: partition %d events after sequence %d up to %d never arrived", e.part, head, e.last)
	}
	t.head[e.part] = e.seq
	t.seq = max(t.seq, e.seq)
	if e.valid {
		t.sums.Add(e.ev)
	}
	return nil
}

// view copies the token totals; ok is false when there are none yet.
func (f *fleetTotals) view() (counts map[tokenKey]usage.Count, src TokenSource, ok bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.shown == nil {
		return nil, TokenSource{Mode: ModeLocal, Reason: "fleet totals not ready: " + f.notReady()}, false
	}
	shown := f.shown.sums.(tokenTotals)
	counts = make(map[tokenKey]usage.Count, len(shown))
	for k, c := range shown {
		counts[k] = *c
	}
	return counts, TokenSource{Mode: ModeFleet, Reason: f.reason, ClickHouseAt: f.since, StreamSeq: f.shown.seq}, true
}

// notReady says why no build is ready yet. Call with f.mu held.
func (f *fleetTotals) notReady() string {
	if f.reason == "" {
		return "reading the usage stream and clickhouse"
	}
	return f.reason
}

// stats is how many builds started and how many events the last ready
// one read from the stream.
func (f *fleetTotals) stats() (builds, filled int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.builds, f.filled
}
