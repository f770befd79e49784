package affinity

import (
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/droverhq/drover/pkg/config"
)

// The wire format of drover.affinity (little-endian, binary: a block hash
// costs its 8 bytes and nothing more):
//
//	byte     version (1)
//	uvarint  len(replica), replica
//	repeated until the end:
//	  uvarint len(backend), backend, uvarint len(model), model
//	  uvarint n, n × 8-byte hashes
//
// A replica sends only what its index did not hold (or held for longer
// than a refresh interval), batched: at most one message per interval.
const wireVersion = 1

// Wire bounds: what a message may claim before it is rejected.
const (
	maxName        = 1024
	maxWireHashes  = 1 << 16
	maxMessageSize = 512 << 10
)

// SharerOptions configure a Sharer.
type SharerOptions struct {
	Conn    *nats.Conn
	Replica string
	Index   *Index
	// Interval spaces messages (routing.affinity.share_interval).
	Interval time.Duration
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
}

// Sharer publishes this replica's index inserts and applies the others'.
type Sharer struct {
	opts SharerOptions
	sub  *nats.Subscription

	mu      sync.Mutex // guards pending and count
	pending map[Target][]uint64
	count   int

	kick    chan struct{} // buffered 1: something is pending
	stop    chan struct{}
	done    chan struct{}
	warnMu  sync.Mutex
	warnMax time.Time // next time a rejected message is logged
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
	if opts.MaxPending <= 0 {
		opts.MaxPending = 8192
	}
	if opts.Log == nil {
		opts.Log = slog.Default()
	}
	s := &Sharer{opts: opts, pending: map[Target][]uint64{}, kick: make(chan struct{}, 1), stop: make(chan struct{}), done: make(chan struct{})}
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

// Close sends what is pending and stops.
func (s *Sharer) Close() {
	close(s.stop)
	<-s.done
	s.sub.Unsubscribe() //nolint:errcheck // the connection may be gone
}

func (s *Sharer) run() {
	defer close(s.done)
	timer := time.NewTimer(s.opts.Interval)
	defer timer.Stop()
	for {
		select {
		case <-s.kick:
		case <-s.stop:
			s.flush()
			return
		}
		s.flush()
		// At most one message per interval: what arrives meanwhile waits
		// and goes in the next one.
		timer.Reset(s.opts.Interval)
		select {
		case <-timer.C:
		case <-s.stop:
			s.flush()
			return
		}
	}
}

func (s *Sharer) flush() {
	s.mu.Lock()
	pending := s.pending
	if s.count == 0 {
		s.mu.Unlock()
		return
	}
	s.pending, s.count = make(map[Target][]uint64, len(pending)), 0
	s.mu.Unlock()
	for _, msg := range encode(s.opts.Replica, pending) {
		if err := s.opts.Conn.Publish(config.SubjectAffinity, msg); err != nil {
			s.warn("affinity inserts not shared", "err", err)
			continue
		}
		if s.opts.Observe != nil {
			s.opts.Observe("sent", 1, len(msg))
		}
	}
}

// encode packs pending into messages of at most maxMessageSize bytes.
func encode(replica string, pending map[Target][]uint64) [][]byte {
	head := binary.AppendUvarint([]byte{wireVersion}, uint64(len(replica)))
	head = append(head, replica...)
	var out [][]byte
	msg := append([]byte(nil), head...)
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
	return out
}

// group is one target's hashes in a message.
type group struct {
	t      Target
	hashes []uint64
}

// decodeMessage reads a message; any inconsistency rejects all of it.
func decodeMessage(b []byte) (replica string, groups []group, err error) {
	if len(b) == 0 || b[0] != wireVersion {
		return "", nil, errors.New("unknown version")
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
		return "", nil, err
	}
	for len(b) > 0 {
		var g group
		if g.t.Backend, err = str(); err != nil {
			return "", nil, err
		}
		if g.t.Model, err = str(); err != nil {
			return "", nil, err
		}
		n, k := binary.Uvarint(b)
		if k <= 0 || n == 0 || n > maxWireHashes || uint64(len(b)-k) < n*8 {
			return "", nil, errors.New("bad hash count")
		}
		b = b[k:]
		g.hashes = make([]uint64, n)
		for i := range g.hashes {
			g.hashes[i] = binary.LittleEndian.Uint64(b[8*i:])
		}
		b = b[8*n:]
		groups = append(groups, g)
	}
	return replica, groups, nil
}

func (s *Sharer) receive(m *nats.Msg) {
	replica, groups, err := decodeMessage(m.Data)
	if err == nil {
		for _, g := range groups {
			if s.opts.Known != nil && !s.opts.Known(g.t.Backend) {
				err = fmt.Errorf("unknown backend %q", g.t.Backend)
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
	for _, g := range groups {
		s.opts.Index.InsertHashes(g.t, g.hashes, now)
	}
	if s.opts.Observe != nil {
		s.opts.Observe("received", 1, len(m.Data))
	}
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
