package affinity

import "time"

// Tokens is the other replicas' estimated tokens in flight on backend, as
// they last said (0 for replicas silent for 3 heartbeats). It never
// blocks: routing reads it under its lock.
func (s *Sharer) Tokens(backend string) int64 {
	if m := s.tokens.Load(); m != nil {
		return (*m)[backend]
	}
	return 0
}

// setPeer replaces a replica's loads (empty: it has none, or stopped).
func (s *Sharer) setPeer(replica string, loads map[string]int64, now time.Time) {
	s.peersMu.Lock()
	defer s.peersMu.Unlock()
	if len(loads) == 0 {
		delete(s.peers, replica)
	} else {
		s.peers[replica] = peerLoads{loads: loads, at: now}
	}
	s.sumLocked()
}

// expire forgets the loads of replicas silent for 3 heartbeats.
func (s *Sharer) expire(now time.Time) {
	s.peersMu.Lock()
	defer s.peersMu.Unlock()
	gone := false
	for r, p := range s.peers {
		if now.Sub(p.at) > 3*s.opts.Heartbeat {
			delete(s.peers, r)
			gone = true
		}
	}
	if gone {
		s.sumLocked()
	}
}

// sumLocked swaps in the live peers' loads summed per backend.
func (s *Sharer) sumLocked() {
	sum := map[string]int64{}
	for _, p := range s.peers {
		for b, n := range p.loads {
			sum[b] += n
		}
	}
	s.tokens.Store(&sum)
}
