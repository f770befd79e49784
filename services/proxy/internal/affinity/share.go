package affinity

import (
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"math"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/droverhq/drover/pkg/config"
)

// The wire format of drover.affinity (little-endian, binary: a block hash
// costs its 8 bytes and nothing more):
//
//	byte     version (2)
//	uvarint  len(replica), replica
//	byte     flags: 1 = token loads follow, 2 = slot events follow
//	[uvarint n, n × (uvarint len(backend), backend, uvarint tokens)]
//	[uvarint n, n × (byte kind, uvarint len(backend), backend, uvarint len(model), model,
//	                 8-byte id, then by kind:
//	                 0 take:    uvarint slots, uvarint taken (Unix µs; 0 unknown),
//	                            uvarint k, k × 8-byte hashes
//	                 4 take by a waiter: 8-byte ticket, then as 0
//	                 1 release: nothing
//	                 2 join:    8-byte owner take, uvarint joined (Unix µs),
//	                            uvarint longest wait (µs)
//	                 3 leave:   nothing)]
//	repeated until the end:
//	  uvarint len(backend), backend, uvarint len(model), model
//	  uvarint n, n × 8-byte hashes
//
// A replica sends only what its index did not hold (or held for longer
// than a refresh interval), and its estimated tokens in flight per backend
// when they change (every Heartbeat while not zero; empty when it stops),
// and, with SharerOptions.Slots, its grants' slot takes (the prompt's
// chain) and releases, and its requests joining and leaving warm slots'
// lines (a take's and a waiter's id are unique over the fleet: Taken).
// Batched: a message with slot events goes one SlotInterval (default 5ms)
// after the previous message at most, and takes everything else pending
// along; without slot events, at most one message per Interval. Version 1 (no kinds, no
// lines) is rejected: replicas of both versions share nothing until all
// run version 2.
const wireVersion = 2

// Slot event kinds on the wire.
const (
	wireTake         = 0
	wireRelease      = 1
	wireJoin         = 2
	wireLeave        = 3
	wireTakeByWaiter = 4
)

// Wire bounds: what a message may claim before it is rejected.
const (
	maxName        = 1024
	maxWireHashes  = 1 << 16
	maxMessageSize = 512 << 10
	maxWireLoads   = 4096
	maxWireTokens  = 1 << 40
	maxWireEvents  = 4096
	maxWireSlots   = 1 << 16
	flagLoads      = 1
	flagSlots      = 2
)

// SharerOptions configure a Sharer.
type SharerOptions struct {
	Conn    *nats.Conn
	Replica string
	Index   *Index
	// Interval spaces messages (routing.affinity.share_interval).
	Interval time.Duration
	// SlotInterval spaces messages that carry slot events
	// (routing.affinity.slot_share_interval; default 5ms, at most
	// Interval): another replica hears of a take, a release or a join this
	// late at most, so two replicas rarely send one group's requests into
	// one warm slot within it. Such a message carries the inserts and
	// loads pending too: at most 1/SlotInterval messages a second.
	SlotInterval time.Duration
	// MaxPending bounds the hashes waiting for the next message (default
	// 8192, 64 KiB); beyond it inserts are dropped and counted.
	MaxPending int
	// Known, if set, accepts only the backends it knows from others (a
	// replica with another configuration must not fill the index).
	Known func(backend string) bool
	// Observe, if set, counts messages and bytes by direction: "sent",
	// "received", "rejected"; and "dropped" hashes (bytes 0).
	Observe func(direction string, n, bytes int)
	Log     *slog.Logger
	// Loads, if set, is this replica's estimated tokens in flight per
	// backend, read every Interval and sent when it changed, and every
	// Heartbeat (default 1s) while not empty; the others forget a
	// replica's loads 3 heartbeats after its last message.
	Loads     func() map[string]int64
	Heartbeat time.Duration
	// Slots, if set, receives the other replicas' slot events (Slots.Apply);
	// this replica's go out through SlotEvent.
	Slots func(replica string, events []SlotEvent)
}

// Sharer publishes this replica's index inserts and applies the others'.
type Sharer struct {
	opts SharerOptions
	sub  *nats.Subscription

	mu      sync.Mutex // guards pending, count and events
	pending map[Target][]uint64
	count   int
	events  []SlotEvent

	kick    chan struct{} // buffered 1: something is pending
	stop    chan struct{}
	done    chan struct{}
	warnMu  sync.Mutex
	warnMax time.Time // next time a rejected message is logged

	// Owned by the run goroutine: the loads last sent, and when.
	sentLoads   map[string]int64
	sentLoadsAt time.Time

	peersMu sync.Mutex // guards peers
	peers   map[string]peerLoads
	tokens  atomic.Pointer[map[string]int64] // the live peers' loads summed per backend
	heard   atomic.Int64                     // unix nanoseconds of another replica's last message
}

// peerLoads is another replica's latest token loads.
type peerLoads struct {
	loads map[string]int64
	at    time.Time
}

// NewSharer subscribes to config.SubjectAffinity and starts the sender;
// Close stops both.
func NewSharer(opts SharerOptions) (*Sharer, error) {
	if opts.Conn == nil || opts.Index == nil {
		return nil, errors.New("affinity sharing needs a NATS connection and an index")
	}
	if opts.Interval <= 0 {
		opts.Interval = 50 * time.Millisecond
	}
	if opts.SlotInterval <= 0 {
		opts.SlotInterval = 5 * time.Millisecond
	}
	opts.SlotInterval = min(opts.SlotInterval, opts.Interval)
	if opts.MaxPending <= 0 {
		opts.MaxPending = 8192
	}
	if opts.Log == nil {
		opts.Log = slog.Default()
	}
	if opts.Heartbeat <= 0 {
		opts.Heartbeat = time.Second
	}
	s := &Sharer{opts: opts, pending: map[Target][]uint64{}, kick: make(chan struct{}, 1), stop: make(chan struct{}), done: make(chan struct{}),
		peers: map[string]peerLoads{}}
	sub, err := opts.Conn.Subscribe(config.SubjectAffinity, s.receive)
	if err != nil {
		return nil, fmt.Errorf("subscribe to %s: %w", config.SubjectAffinity, err)
	}
	// Peers' messages sent after NewSharer returns should find the
	// subscription in place: wait (briefly) for the server to have it.
	// Offline, the client sends it on connecting; a replica must start
	// without NATS, so this never waits for a connection.
	if opts.Conn.IsConnected() {
		opts.Conn.FlushTimeout(time.Second) //nolint:errcheck // best effort; see above
	}
	s.sub = sub
	go s.run()
	return s, nil
}

// Inserted queues hashes newly inserted for t; it never blocks.
func (s *Sharer) Inserted(t Target, hashes []uint64) {
	s.mu.Lock()
	room := s.opts.MaxPending - s.count
	n := min(room, len(hashes))
	if n > 0 {
		s.pending[t] = append(s.pending[t], hashes[:n]...)
		s.count += n
	}
	s.mu.Unlock()
	if n < len(hashes) && s.opts.Observe != nil {
		s.opts.Observe("dropped", len(hashes)-n, 0)
	}
	if n > 0 {
		select {
		case s.kick <- struct{}{}:
		default:
		}
	}
}

// SlotEvent queues one of this replica's slot takes or releases; it never
// blocks. Beyond maxWireEvents pending it is dropped and counted.
func (s *Sharer) SlotEvent(ev SlotEvent) {
	s.mu.Lock()
	ok := len(s.events) < maxWireEvents
	if ok {
		s.events = append(s.events, ev)
	}
	s.mu.Unlock()
	if !ok {
		if s.opts.Observe != nil {
			s.opts.Observe("dropped", 1, 0)
		}
		return
	}
	select {
	case s.kick <- struct{}{}:
	default:
	}
}

// Close sends what is pending and stops.
func (s *Sharer) Close() {
	close(s.stop)
	<-s.done
	s.sub.Unsubscribe() //nolint:errcheck // the connection may be gone
}

func (s *Sharer) run() {
	defer close(s.done)
	// Loads are read, and peers' expired, every interval.
	tick := time.NewTicker(s.opts.Interval)
	defer tick.Stop()
	// gap fires when the next message may go: one SlotInterval after the
	// last if slot events wait, one Interval after it otherwise.
	gap := time.NewTimer(time.Hour)
	gap.Stop()
	defer gap.Stop()
	var last time.Time // the last message sent
	for {
		select {
		case <-s.kick:
		case <-gap.C:
		case now := <-tick.C:
			s.expire(now)
		case <-s.stop:
			s.flush(true)
			return
		}
		since := time.Since(last)
		wait := s.opts.Interval - since
		if s.hasEvents() {
			wait = s.opts.SlotInterval - since
		}
		if wait > 0 {
			// What arrives meanwhile waits and goes in the next message.
			gap.Reset(wait)
			continue
		}
		if s.flush(false) {
			last = time.Now()
		}
	}
}

// hasEvents reports slot events waiting for the next message.
func (s *Sharer) hasEvents() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.events) > 0
}

// flush sends what is pending, and the loads when they are due; final
// sends empty loads (this replica stops). It reports whether it sent.
func (s *Sharer) flush(final bool) bool {
	var pending map[Target][]uint64
	s.mu.Lock()
	if s.count > 0 {
		pending = s.pending
		s.pending, s.count = make(map[Target][]uint64, len(pending)), 0
	}
	events := s.events
	s.events = nil
	s.mu.Unlock()
	var loads map[string]int64
	if s.opts.Loads != nil {
		now := time.Now()
		cur := s.opts.Loads()
		if final {
			cur = map[string]int64{}
		}
		if final || !maps.Equal(cur, s.sentLoads) || (len(cur) > 0 && now.Sub(s.sentLoadsAt) >= s.opts.Heartbeat) {
			if cur == nil {
				cur = map[string]int64{}
			}
			loads, s.sentLoads, s.sentLoadsAt = cur, cur, now
		}
	}
	if len(pending) == 0 && loads == nil && len(events) == 0 {
		return false
	}
	for _, msg := range encode(s.opts.Replica, loads, events, pending) {
		if err := s.opts.Conn.Publish(config.SubjectAffinity, msg); err != nil {
			s.warn("affinity inserts not shared", "err", err)
			continue
		}
		if s.opts.Observe != nil {
			s.opts.Observe("sent", 1, len(msg))
		}
	}
	return true
}

// encode packs loads (nil: none), slot events and pending into messages
// of at most maxMessageSize bytes; loads go in the first, events in
// messages of their own after it (at most 256 each: 140 KiB at 64 hashes).
func encode(replica string, loads map[string]int64, events []SlotEvent, pending map[Target][]uint64) [][]byte {
	events0 := events
	head := binary.AppendUvarint([]byte{wireVersion}, uint64(len(replica)))
	head = append(head, replica...)
	head = append(head, 0) // flags
	var out [][]byte
	msg := append([]byte(nil), head...)
	if loads != nil {
		msg[len(head)-1] = flagLoads
		msg = binary.AppendUvarint(msg, uint64(len(loads)))
		for b, n := range loads {
			msg = binary.AppendUvarint(msg, uint64(len(b)))
			msg = append(msg, b...)
			msg = binary.AppendUvarint(msg, uint64(max(n, 0)))
		}
	}
	for len(events) > 0 {
		if len(msg) > len(head) && msg[len(head)-1]&flagSlots != 0 {
			out = append(out, msg)
			msg = append([]byte(nil), head...)
		}
		n := min(len(events), 256)
		msg[len(head)-1] |= flagSlots
		msg = binary.AppendUvarint(msg, uint64(n))
		for _, ev := range events[:n] {
			kind := byte(wireRelease)
			switch {
			case ev.Kind == SlotJoin:
				kind = wireJoin
			case ev.Kind == SlotLeave:
				kind = wireLeave
			case ev.Chain != nil && ev.Ticket != 0:
				kind = wireTakeByWaiter
			case ev.Chain != nil:
				kind = wireTake
			}
			msg = append(msg, kind)
			msg = binary.AppendUvarint(msg, uint64(len(ev.T.Backend)))
			msg = append(msg, ev.T.Backend...)
			msg = binary.AppendUvarint(msg, uint64(len(ev.T.Model)))
			msg = append(msg, ev.T.Model...)
			msg = binary.LittleEndian.AppendUint64(msg, ev.ID)
			switch kind {
			case wireJoin:
				msg = binary.LittleEndian.AppendUint64(msg, ev.Owner)
				msg = binary.AppendUvarint(msg, uint64(max(ev.At, 0)))
				msg = binary.AppendUvarint(msg, uint64(max(ev.Until-ev.At, 0)))
			case wireTakeByWaiter, wireTake:
				if kind == wireTakeByWaiter {
					msg = binary.LittleEndian.AppendUint64(msg, ev.Ticket)
				}
				msg = binary.AppendUvarint(msg, uint64(max(ev.Slots, 0)))
				msg = binary.AppendUvarint(msg, uint64(max(ev.At, 0)))
				c := ev.Chain[:min(len(ev.Chain), 1024)]
				msg = binary.AppendUvarint(msg, uint64(len(c)))
				for _, h := range c {
					msg = binary.LittleEndian.AppendUint64(msg, h)
				}
			}
		}
		events = events[n:]
	}
	if len(msg) > len(head) {
		out = append(out, msg)
		msg = append([]byte(nil), head...)
	}
	for t, hs := range pending {
		for len(hs) > 0 {
			room := (maxMessageSize - len(msg) - len(t.Backend) - len(t.Model) - 30) / 8
			if room < 1 || (room < len(hs) && len(msg) > len(head)) {
				out = append(out, msg)
				msg = append([]byte(nil), head...)
				continue
			}
			n := min(room, len(hs), maxWireHashes)
			msg = binary.AppendUvarint(msg, uint64(len(t.Backend)))
			msg = append(msg, t.Backend...)
			msg = binary.AppendUvarint(msg, uint64(len(t.Model)))
			msg = append(msg, t.Model...)
			msg = binary.AppendUvarint(msg, uint64(n))
			for _, h := range hs[:n] {
				msg = binary.LittleEndian.AppendUint64(msg, h)
			}
			hs = hs[n:]
		}
	}
	if len(msg) > len(head) {
		out = append(out, msg)
	}
	if (loads != nil || len(events0) > 0) && len(out) > 1 && out[1][len(head)-1] == 0 && len(out[0])+len(out[1])-len(head) <= maxMessageSize {
		// The loads' and events' message takes the first group of hashes
		// along (the hash groups come last in a message).
		first := out[1][len(head):]
		out[0] = append(out[0], first...)
		out = append(out[:1], out[2:]...)
	}
	return out
}

// group is one target's hashes in a message.
type group struct {
	t      Target
	hashes []uint64
}

// decodeWire reads a message; any inconsistency rejects all of it.
// loads is nil when the message carries none.
func decodeWire(b []byte) (replica string, loads map[string]int64, events []SlotEvent, groups []group, err error) {
	fail := func(msg string) (string, map[string]int64, []SlotEvent, []group, error) {
		return "", nil, nil, nil, errors.New(msg)
	}
	if len(b) == 0 || b[0] != wireVersion {
		return fail("unknown version")
	}
	b = b[1:]
	str := func() (string, error) {
		n, k := binary.Uvarint(b)
		if k <= 0 || n > maxName || uint64(len(b)-k) < n {
			return "", errors.New("bad string")
		}
		s := string(b[k : k+int(n)])
		b = b[k+int(n):]
		return s, nil
	}
	if replica, err = str(); err != nil {
		return fail(err.Error())
	}
	if len(b) == 0 || b[0]&^(flagLoads|flagSlots) != 0 {
		return fail("bad flags")
	}
	flags := b[0]
	b = b[1:]
	if flags&flagLoads != 0 {
		n, k := binary.Uvarint(b)
		if k <= 0 || n > maxWireLoads {
			return fail("bad load count")
		}
		b = b[k:]
		loads = make(map[string]int64, n)
		for range n {
			backend, err := str()
			if err != nil {
				return fail(err.Error())
			}
			v, k := binary.Uvarint(b)
			if k <= 0 || v > maxWireTokens {
				return fail("bad token load")
			}
			b = b[k:]
			loads[backend] = int64(v)
		}
	}
	uvarint := func(limit uint64) (uint64, bool) {
		v, k := binary.Uvarint(b)
		if k <= 0 || v > limit {
			return 0, false
		}
		b = b[k:]
		return v, true
	}
	if flags&flagSlots != 0 {
		n, ok := uvarint(maxWireEvents)
		if !ok {
			return fail("bad slot event count")
		}
		events = make([]SlotEvent, 0, n)
		fixed := func() (uint64, bool) {
			if len(b) < 8 {
				return 0, false
			}
			v := binary.LittleEndian.Uint64(b)
			b = b[8:]
			return v, true
		}
		for range n {
			var ev SlotEvent
			if len(b) == 0 || b[0] > wireTakeByWaiter {
				return fail("bad slot event kind")
			}
			kind := b[0]
			b = b[1:]
			if ev.T.Backend, err = str(); err != nil {
				return fail(err.Error())
			}
			if ev.T.Model, err = str(); err != nil {
				return fail(err.Error())
			}
			var ok bool
			if ev.ID, ok = fixed(); !ok {
				return fail("bad slot event")
			}
			switch kind {
			case wireJoin:
				ev.Kind = SlotJoin
				owner, ok1 := fixed()
				at, ok2 := uvarint(math.MaxInt64 / 2)
				wait, ok3 := uvarint(math.MaxInt64 / 2)
				if !ok1 || !ok2 || !ok3 {
					return fail("bad slot join")
				}
				ev.Owner, ev.At, ev.Until = owner, int64(at), int64(at+wait)
			case wireLeave:
				ev.Kind = SlotLeave
			case wireTake, wireTakeByWaiter:
				if kind == wireTakeByWaiter {
					if ev.Ticket, ok = fixed(); !ok {
						return fail("bad slot event")
					}
				}
				slots, ok2 := uvarint(maxWireSlots)
				at, ok4 := uvarint(math.MaxInt64 / 2)
				k, ok3 := uvarint(maxWireHashes)
				if !ok2 || !ok3 || !ok4 || uint64(len(b)) < 8*k {
					return fail("bad slot event")
				}
				ev.Slots, ev.At = int(slots), int64(at)
				ev.Chain = make([]uint64, k) // not nil: a take
				for i := range ev.Chain {
					ev.Chain[i] = binary.LittleEndian.Uint64(b[8*i:])
				}
				b = b[8*k:]
			}
			events = append(events, ev)
		}
	}
	for len(b) > 0 {
		var g group
		if g.t.Backend, err = str(); err != nil {
			return fail(err.Error())
		}
		if g.t.Model, err = str(); err != nil {
			return fail(err.Error())
		}
		n, k := binary.Uvarint(b)
		if k <= 0 || n == 0 || n > maxWireHashes || uint64(len(b)-k) < n*8 {
			return fail("bad hash count")
		}
		b = b[k:]
		g.hashes = make([]uint64, n)
		for i := range g.hashes {
			g.hashes[i] = binary.LittleEndian.Uint64(b[8*i:])
		}
		b = b[8*n:]
		groups = append(groups, g)
	}
	return replica, loads, events, groups, nil
}

func (s *Sharer) receive(m *nats.Msg) {
	replica, loads, events, groups, err := decodeWire(m.Data)
	if err == nil && s.opts.Known != nil {
		for _, ev := range events {
			if !s.opts.Known(ev.T.Backend) {
				err = fmt.Errorf("unknown backend %q", ev.T.Backend)
				break
			}
		}
		for _, g := range groups {
			if !s.opts.Known(g.t.Backend) {
				err = fmt.Errorf("unknown backend %q", g.t.Backend)
				break
			}
		}
		for b := range loads {
			if !s.opts.Known(b) {
				err = fmt.Errorf("unknown backend %q", b)
				break
			}
		}
	}
	if err != nil {
		if s.opts.Observe != nil {
			s.opts.Observe("rejected", 1, len(m.Data))
		}
		s.warn("affinity message rejected", "replica", replica, "err", err)
		return
	}
	if replica == s.opts.Replica {
		return // our own, on a connection that echoes
	}
	now := time.Now()
	s.heard.Store(now.UnixNano())
	for _, g := range groups {
		s.opts.Index.InsertHashes(g.t, g.hashes, now)
	}
	if loads != nil {
		s.setPeer(replica, loads, now)
	}
	if len(events) > 0 && s.opts.Slots != nil {
		s.opts.Slots(replica, events)
	}
	if s.opts.Observe != nil {
		s.opts.Observe("received", 1, len(m.Data))
	}
}

// Alone reports that no other replica sent anything for three heartbeats
// (3 s by default): this replica's requests are, as far as it can tell,
// all the backends serve.
func (s *Sharer) Alone() bool {
	return time.Since(time.Unix(0, s.heard.Load())) > 3*s.opts.Heartbeat
}

// warn logs at most once every 10 seconds.
func (s *Sharer) warn(msg string, args ...any) {
	now := time.Now()
	s.warnMu.Lock()
	if now.Before(s.warnMax) {
		s.warnMu.Unlock()
		return
	}
	s.warnMax = now.Add(10 * time.Second)
	s.warnMu.Unlock()
	s.opts.Log.Warn(msg, args...)
}
