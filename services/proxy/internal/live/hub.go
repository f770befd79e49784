package live

import "sync"

// hub fans encoded snapshots out to subscribers, each subscriber seeing
// the snapshots of its scope only. Publishing never waits on a
// subscriber: each one has a one-slot mailbox that a newer snapshot
// overwrites, so a slow reader skips what it missed and gets the latest
// when it catches up.
type hub struct {
	mu     sync.Mutex                  // guards subs, n and latest
	subs   map[scope]map[*sub]struct{} // subscribers by scope; a scope without any is absent
	n      int                         // subscribers in all
	latest map[scope][]byte            // last snapshot of each scope in subs; a new subscriber starts with it
}

// sub is one subscriber's mailbox.
type sub struct {
	scope scope
	mu    sync.Mutex // guards msg
	msg   []byte     // the newest snapshot not yet taken; nil when taken
	wake  chan struct{}
}

func newHub() *hub {
	return &hub{subs: map[scope]map[*sub]struct{}{}, latest: map[scope][]byte{}}
}

// subscribe registers a subscriber of sc whose mailbox already holds sc's
// latest snapshot, if there is one (fresh reports whether there was).
func (h *hub) subscribe(sc scope) (s *sub, fresh bool) {
	s = &sub{scope: sc, wake: make(chan struct{}, 1)}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.subs[sc] == nil {
		h.subs[sc] = map[*sub]struct{}{}
	}
	h.subs[sc][s] = struct{}{}
	h.n++
	if b := h.latest[sc]; b != nil {
		s.put(b)
		return s, true
	}
	return s, false
}

// unsubscribe removes s; publishing no longer reaches it. The last
// subscriber of a scope takes the scope's latest snapshot with it.
func (h *hub) unsubscribe(s *sub) {
	h.mu.Lock()
	defer h.mu.Unlock()
	subs := h.subs[s.scope]
	if _, ok := subs[s]; !ok {
		return
	}
	delete(subs, s)
	h.n--
	if len(subs) == 0 {
		delete(h.subs, s.scope)
		delete(h.latest, s.scope)
	}
}

// publish stores b as sc's latest snapshot and drops it in the mailbox of
// every subscriber of sc, replacing whatever was unread. b must not be
// modified afterwards.
func (h *hub) publish(sc scope, b []byte) {
	h.mu.Lock()
	defer h.mu.Unlock()
	subs := h.subs[sc]
	if len(subs) == 0 {
		return // nobody of sc listens
	}
	h.latest[sc] = b
	for s := range subs {
		s.put(b)
	}
}

// scopes lists the scopes with subscribers.
func (h *hub) scopes() []scope {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := make([]scope, 0, len(h.subs))
	for sc := range h.subs {
		out = append(out, sc)
	}
	return out
}

// len is the number of subscribers.
func (h *hub) len() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.n
}

func (s *sub) put(b []byte) {
	s.mu.Lock()
	s.msg = b
	s.mu.Unlock()
	select {
	case s.wake <- struct{}{}:
	default: // a wake-up is already pending; it will find b
	}
}

// take returns the unread snapshot, or nil if there is none.
func (s *sub) take() []byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	b := s.msg
	s.msg = nil
	return b
}
