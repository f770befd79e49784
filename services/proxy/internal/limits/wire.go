package limits

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/droverhq/drover/pkg/config"
)

// wireMsg is one message on config.SubjectLimits: a replica's new
// reservations and settlements since its last message, or (Full, every
// heartbeat) the whole set of its outstanding reservations, which replaces
// what peers hold for it and so repairs a lost message. One connection
// sends them in order, so a peer applies them in the order they happened.
type wireMsg struct {
	Replica string       `json:"r"`
	Epoch   string       `json:"p"`
	Full    bool         `json:"f,omitempty"`
	Sent    int64        `json:"s,omitempty"` // Unix microseconds, when sent
	Res     []wireRes    `json:"res,omitempty"`
	Set     []wireSettle `json:"set,omitempty"`
}

type wireRes struct {
	ID     uint64 `json:"i"`
	Key    string `json:"k"`
	Model  string `json:"m,omitempty"`
	Tokens int64  `json:"t"`
}

// wireSettle ends reservation ID with Tokens spent; Event is the usage
// event's id ("" for a request that produced none), so the event arriving
// again through the usage stream is not counted twice.
type wireSettle struct {
	ID     uint64 `json:"i"`
	Event  string `json:"e,omitempty"`
	Key    string `json:"k"`
	Model  string `json:"m,omitempty"`
	Tokens int64  `json:"t"`
	At     int64  `json:"at"` // Unix milliseconds
}

// Bounds on what a peer may claim (a bug, or a forger holding the
// proxies' NATS credentials): a message past them is dropped whole.
const (
	maxPeers       = 256
	maxPeerResv    = 1 << 16 // outstanding reservations of one peer
	maxMsgOps      = 1 << 16
	maxNameLen     = 256
	maxClaimTokens = 1 << 40 // any token count above is absurd
	maxClockSkew   = 10 * time.Minute
)

// peer is another replica's outstanding reservations.
type peer struct {
	seen time.Time
	res  map[uint64]*resv
}

func (l *Ledger) subscribe() error {
	sub, err := l.opts.Conn.Subscribe(config.SubjectLimits, l.receive)
	if err != nil {
		return fmt.Errorf("subscribing to %s: %w", config.SubjectLimits, err)
	}
	l.sub = sub
	// Peers' messages sent after New returns must find the subscription
	// in place: wait (briefly) for the server to have it. Offline, the
	// client sends it on connecting.
	if l.opts.Conn.IsConnected() {
		l.opts.Conn.FlushTimeout(time.Second) //nolint:errcheck // best effort; see above
	}
	return nil
}

// sendLoop sends a change at once and the changes after it at most one
// message per Linger, and the full set every Heartbeat; it expires peers
// on the same beat.
func (l *Ledger) sendLoop(ctx context.Context) {
	defer l.wg.Done()
	beat := time.NewTicker(l.opts.Heartbeat)
	defer beat.Stop()
	l.flush(true) // peers count this replica from its start
	for {
		select {
		case <-ctx.Done():
			return
		case <-l.kick:
			// The first change goes at once; changes made while it is
			// sent and for Linger after wait and go together.
			l.flush(false)
			select {
			case <-ctx.Done():
				return
			case <-time.After(l.opts.Linger):
			}
		case <-beat.C:
			l.flush(true)
			l.expire()
			l.mu.Lock()
			l.lag /= 2 // the largest lag of late, halved every beat
			l.mu.Unlock()
		}
	}
}

// flush sends what changed (and, full, every outstanding reservation).
func (l *Ledger) flush(full bool) {
	now := l.opts.Now()
	l.mu.Lock()
	m := l.outbox
	l.outbox = wireMsg{}
	for _, r := range l.recent {
		if r.sent.IsZero() {
			r.sent = now
		}
	}
	if full {
		m.Full, m.Res = true, m.Res[:0]
		if !l.count {
			for id, r := range l.own {
				if r.tokens >= 0 && l.limitedKey(r.key) {
					m.Res = append(m.Res, wireRes{ID: id, Key: r.key, Model: r.model, Tokens: r.tokens})
				}
			}
		}
	}
	l.mu.Unlock()
	if !full && len(m.Res) == 0 && len(m.Set) == 0 {
		return
	}
	m.Replica, m.Epoch, m.Sent = l.opts.Replica, l.epoch, l.opts.Now().UnixMicro()
	b, err := json.Marshal(m)
	if err != nil {
		l.log.Error("limits: encoding a message", "err", err)
		return
	}
	if err := l.opts.Conn.Publish(config.SubjectLimits, b); err != nil {
		l.log.Warn("limits: sharing reservations", "err", err)
	}
}

// limitedKey reports whether key has limits (its reservations are
// shared). Call with l.mu held.
func (l *Ledger) limitedKey(key string) bool { _, ok := l.maxTok[key]; return ok }

// receive applies a peer's message.
func (l *Ledger) receive(nm *nats.Msg) {
	var m wireMsg
	if err := json.Unmarshal(nm.Data, &m); err != nil {
		l.log.Warn("limits: dropping a message that is not one", "err", err)
		return
	}
	if m.Replica == l.opts.Replica && m.Epoch == l.epoch {
		return // our own
	}
	c := clockAt(l.opts.Now())
	if err := l.valid(&m, c); err != nil {
		l.log.Warn("limits: dropping a message", "replica", m.Replica, "err", err)
		return
	}
	name := m.Replica + "/" + m.Epoch
	l.mu.Lock()
	defer l.mu.Unlock()
	p := l.peers[name]
	if p == nil {
		if len(l.peers) >= maxPeers {
			l.log.Warn("limits: too many replicas; dropping a new one's message", "replica", m.Replica, "max", maxPeers)
			return
		}
		p = &peer{res: map[uint64]*resv{}}
		l.peers[name] = p
	}
	p.seen = c.now
	if lag := c.now.Sub(time.UnixMicro(m.Sent)); m.Sent > 0 && lag > l.lag && lag < maxDelay {
		l.lag = lag
	}
	if m.Full {
		for id, r := range p.res {
			delete(p.res, id)
			l.hold(r, -1, c)
		}
	}
	for _, w := range m.Res {
		if len(p.res) >= maxPeerResv {
			break
		}
		if old := p.res[w.ID]; old != nil {
			l.hold(old, -1, c)
		}
		r := &resv{key: w.Key, model: w.Model, tokens: w.Tokens}
		if mt, ok := l.maxTok[w.Key]; ok && mt > 0 && r.tokens > mt {
			// No request of this key could reserve more than its largest
			// limit and be admitted.
			r.tokens = mt
		}
		p.res[w.ID] = r
		l.hold(r, +1, c)
	}
	// Settlements after reservations: a message may carry both of one
	// request.
	for _, s := range m.Set {
		if r := p.res[s.ID]; r != nil {
			delete(p.res, s.ID)
			l.hold(r, -1, c)
		}
		l.settled(s.Event, s.Key, s.Model, s.Tokens, time.UnixMilli(s.At), c)
	}
}

// valid checks a peer's message against the bounds.
func (l *Ledger) valid(m *wireMsg, c clock) error {
	if m.Replica == "" || len(m.Replica) > maxNameLen || len(m.Epoch) > maxNameLen {
		return fmt.Errorf("bad replica name")
	}
	if len(m.Res)+len(m.Set) > maxMsgOps {
		return fmt.Errorf("%d changes in one message, more than %d", len(m.Res)+len(m.Set), maxMsgOps)
	}
	for _, r := range m.Res {
		if r.Key == "" || len(r.Key) > maxNameLen || len(r.Model) > maxNameLen || r.Tokens < 0 || r.Tokens > maxClaimTokens {
			return fmt.Errorf("reservation %d: bad key, model or tokens %d", r.ID, r.Tokens)
		}
	}
	for _, s := range m.Set {
		at := time.UnixMilli(s.At)
		if s.Key == "" || len(s.Key) > maxNameLen || len(s.Model) > maxNameLen || len(s.Event) > maxNameLen || s.Tokens < 0 || s.Tokens > maxClaimTokens {
			return fmt.Errorf("settlement %d: bad key, model, event or tokens %d", s.ID, s.Tokens)
		}
		if at.After(c.now.Add(maxClockSkew)) {
			return fmt.Errorf("settlement %d: dated %s, in the future", s.ID, at.UTC().Format(time.RFC3339))
		}
	}
	return nil
}

// dropPeer forgets a peer and its reservations. Call with l.mu held.
func (l *Ledger) dropPeer(name string, p *peer, c clock) {
	for _, r := range p.res {
		l.hold(r, -1, c)
	}
	delete(l.peers, name)
}
