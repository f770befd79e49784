package limits

import (
	"net/http"
	"sync/atomic"
	"time"

	"github.com/droverhq/drover/pkg/usage"
)

// settled counts a settlement of tokens at time at for key and model,
// once per event id. Call with l.mu held.
func (l *Ledger) settled(eventID, key, model string, tokens int64, at time.Time, c clock) {
	seen := l.ids[eventID]
	if eventID != "" && l.opts.Conn != nil { // without NATS, nothing arrives twice (and nothing prunes ids)
		if seen != nil && seen.settled {
			return // counted already
		}
		if seen == nil {
			seen = &idSeen{at: c.now}
			l.ids[eventID] = seen
		}
		seen.settled = true
	}
	ac := clockAt(at)
	streamed := seen != nil && seen.streamed
	for _, sc := range scopes(key, model) {
		w := l.win(sc, c)
		if !streamed && ac.minute == c.minute {
			w.requests++
			w.tokens += tokens
		}
		if ac.day == c.day {
			w.dayTokens += tokens
		}
		if ac.month == c.month {
			w.monthTokens += tokens
		}
		if l.tally != nil && !streamed && eventID != "" {
			if ac.day == c.day {
				w.pDayTokens += tokens
			}
			if ac.month == c.month {
				w.pMonthTokens += tokens
			}
		}
	}
	if l.tally != nil && !streamed && eventID != "" {
		l.pending[eventID] = &settle{key: key, model: model, tokens: tokens, day: ac.day, month: ac.month, at: c.now}
	}
}

// unpend drops a pending settlement (its event is in the tally now, or
// it waited too long). Call with l.mu held.
func (l *Ledger) unpend(id string, c clock) {
	s := l.pending[id]
	if s == nil {
		return
	}
	delete(l.pending, id)
	for _, sc := range scopes(s.key, s.model) {
		w := l.win(sc, c)
		if s.day == w.pDay {
			w.pDayTokens -= s.tokens
		}
		if s.month == w.pMonth {
			w.pMonthTokens -= s.tokens
		}
	}
}

// streamed takes an event the follower added to its current tally t.
func (l *Ledger) streamed(t *budgetTally, ev usage.Event) {
	c := clockAt(l.opts.Now())
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.tally != t {
		return
	}
	seen := l.ids[ev.ID]
	if seen == nil {
		seen = &idSeen{at: c.now}
		l.ids[ev.ID] = seen
	}
	if seen.streamed {
		return
	}
	seen.streamed = true
	l.unpend(ev.ID, c)
	if !seen.settled && ev.Status != http.StatusTooManyRequests && clockAt(ev.Time).minute == c.minute {
		// A request no settlement told of (a peer's lost message, or one
		// from before this replica started): it counts in its minute. A
		// refusal's event is none: it was never admitted.
		in, out, _ := ev.Tokens()
		for _, sc := range scopes(ev.APIKey, ev.Model) {
			w := l.win(sc, c)
			w.requests++
			w.tokens += in + out
		}
	}
}

// ready makes t the current tally: settlements it already holds stop
// being pending. Called under the follower's lock.
func (l *Ledger) ready(t *budgetTally) {
	c := clockAt(l.opts.Now())
	l.mu.Lock()
	defer l.mu.Unlock()
	t.mu.Lock()
	ids := t.ids
	t.ids, t.ready = nil, true
	t.mu.Unlock()
	first := l.tally == nil
	l.tally = t
	if first {
		// Settlements seen before the first tally: pending from now.
		for _, w := range l.windows {
			w.pDay, w.pDayTokens, w.pMonth, w.pMonthTokens = c.day, 0, c.month, 0
		}
	}
	for id := range ids {
		seen := l.ids[id]
		if seen == nil {
			seen = &idSeen{at: c.now}
			l.ids[id] = seen
		}
		seen.streamed = true
		l.unpend(id, c)
	}
	l.log.Info("limits: day and month spend read from clickhouse and the usage stream", "events_in_build", len(ids))
}

// expire drops what is too old: peers' reservations past their TTL,
// remembered ids and pending settlements past idTTL.
func (l *Ledger) expire() {
	c := clockAt(l.opts.Now())
	ttl := peerTTLBeats * l.opts.Heartbeat
	l.mu.Lock()
	defer l.mu.Unlock()
	for name, p := range l.peers {
		if c.now.Sub(p.seen) > ttl {
			l.dropPeer(name, p, c)
		}
	}
	for id, s := range l.pending {
		if c.now.Sub(s.at) > idTTL {
			l.unpend(id, c)
		}
	}
	for id, s := range l.ids {
		if c.now.Sub(s.at) > idTTL {
			delete(l.ids, id)
		}
	}
}

// Ticket is one admitted request's reservation.
type Ticket struct {
	l          *Ledger
	id         uint64
	key, model string
	est        int64
	header     map[string]string
	done       atomic.Bool
}

// Header is the x-ratelimit-* headers for the response (nil for a key
// without limits).
func (t *Ticket) Header() map[string]string { return t.header }

// Settle ends the reservation with the request's usage event: its tokens
// when the backend reported them; the estimate when it answered 2xx
// without counts (a stream cut short, a backend that reports none); zero
// when it answered an error or nothing. Only the first Settle or Release
// counts.
func (t *Ticket) Settle(ev *usage.Event) {
	if !t.done.CompareAndSwap(false, true) {
		return
	}
	in, out, known := ev.Tokens()
	tokens := in + out
	if !known && ev.Status >= 200 && ev.Status < 300 {
		tokens = max(tokens, t.est)
	}
	t.l.finish(t, ev.ID, tokens, ev.Time)
}

// Release ends the reservation of a request that produced no usage event
// (refused later, or a panic), counting the request and no tokens; after
// Settle it does nothing.
func (t *Ticket) Release() {
	if !t.done.CompareAndSwap(false, true) {
		return
	}
	t.l.finish(t, "", 0, t.l.opts.Now())
}

func (l *Ledger) finish(t *Ticket, eventID string, tokens int64, at time.Time) {
	if at.IsZero() {
		at = l.opts.Now()
	}
	c := clockAt(l.opts.Now())
	l.mu.Lock()
	defer l.mu.Unlock()
	if r := l.own[t.id]; r != nil {
		delete(l.own, t.id)
		l.hold(r, -1, c)
	}
	l.settled(eventID, t.key, t.model, tokens, at, c)
	// Only a key with limits needs its spend on the other replicas within
	// a message delay; every key's spend reaches them anyway through the
	// usage stream (the follower), deduplicated by event id. Sending every
	// request's settlement cost each replica 4.6-6.7 µs of CPU per request
	// (encoding, sending, and every peer decoding it) for keys nobody limits.
	if l.opts.Conn != nil && l.limitedKey(t.key) {
		l.outbox.Set = append(l.outbox.Set, wireSettle{ID: t.id, Event: eventID, Key: t.key, Model: t.model, Tokens: tokens, At: at.UnixMilli()})
		l.kickSend()
	}
}
