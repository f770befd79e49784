package live

import "sync"

// hub fans encoded snapshots out to subscribers. Publishing never waits on
// a subscriber: each one has a one-slot mailbox that a newer snapshot
// overwrites, so a slow reader skips what it missed and gets the latest
// when it catches up.
type hub struct {
	mu     sync.Mutex // guards subs and latest
	subs   map[*sub]struct{}
	latest []byte // last published snapshot; a new subscriber starts with it
}

// sub is one subscriber's mailbox.
type sub struct {
	mu   sync.Mutex // guards msg
	msg  []byte     // the newest snapshot not yet taken; nil when taken
	wake chan struct{}
}

func newHub() *hub { return &hub{subs: map[*sub]struct{}{}} }

// subscribe registers a subscriber whose mailbox already holds the latest
// snapshot, if any.
func (h *hub) subscribe() *sub {
	s := &sub{wake: make(chan struct{}, 1)}
	h.mu.Lock()
	h.subs[s] = struct{}{}
	if h.latest != nil {
		s.put(h.latest)
	}
	h.mu.Unlock()
	return s
}

// unsubscribe removes s; publishing no longer reaches it.
func (h *hub) unsubscribe(s *sub) {
	h.mu.Lock()
	delete(h.subs, s)
	h.mu.Unlock()
}

// publish stores b as the latest snapshot and drops it in every mailbox,
// replacing whatever was unread. b must not be modified afterwards.
func (h *hub) publish(b []byte) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.latest = b
	for s := range h.subs {
		s.put(b)
	}
}

// len is the number of subscribers.
func (h *hub) len() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.subs)
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
