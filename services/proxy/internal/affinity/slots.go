package affinity

import (
	"math"
	"sync"
	"time"
)

// Slots models each (backend, model)'s prompt-cache slots as Ollama fills
// them, from the requests this replica sends: a request takes, among the
// free slots, the one holding the longest prefix of its prompt, ties to
// the lowest-numbered (Ollama 0.17.4's findLongestCacheSlot with
// OLLAMA_MULTIUSER_CACHE unset), and its prompt replaces what the slot
// held. So a prompt that missed everywhere overwrites slot 0 whatever its
// popularity, a prompt whose slot is busy lands in another one, and what
// sits in slots 1 to 3 stays however old: orders a least-recently-used
// index does not follow. The model is exact only when this replica sends
// everything the backend serves (docs/routing.md).
//
// It is safe for concurrent use.
type Slots struct {
	ttl       time.Duration
	maxBlocks int // per slot: a prompt's leading blocks kept

	mu      sync.Mutex
	targets map[Target][]modelSlot
	// pop is each home key's (a prompt's first block: its group's)
	// requests through this replica, decayed with popHalfLife: what a
	// slot's prompt is worth keeping.
	pop map[uint64]popularity
}

// popHalfLife is how fast a group's request count fades: long enough that
// a group asked a few times a minute keeps its worth between requests,
// short enough that a group gone quiet yields its slot within a minute.
const popHalfLife = 20 * time.Second

// maxPop bounds Slots.pop; beyond it the faded entries go.
const maxPop = 4096

type popularity struct {
	v  float64
	at int64 // unix nanoseconds of v
}

func (p popularity) value(now int64) float64 {
	if now <= p.at {
		return p.v
	}
	return p.v * math.Exp2(-float64(now-p.at)/float64(popHalfLife))
}

// modelSlot is one slot: the chain of the last prompt it took.
type modelSlot struct {
	chain []uint64
	busy  bool
	at    int64 // unix nanoseconds it was last taken
}

// NewSlots returns an empty model; a slot's prompt is forgotten ttl after
// it was taken (the model's keep_alive), and at most maxBlocks leading
// blocks of each prompt are kept (a slot's context).
func NewSlots(ttl time.Duration, maxBlocks int) *Slots {
	return &Slots{ttl: ttl, maxBlocks: max(maxBlocks, 1), targets: map[Target][]modelSlot{}, pop: map[uint64]popularity{}}
}

// Free is the longest run of p's leading blocks that a free slot of t
// holds: what t would serve from cache if p reached it now.
func (s *Slots) Free(t Target, p *Prompt, now time.Time) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, n := s.pickLocked(s.targets[t], p.Chain, now.UnixNano())
	return n
}

// Evicts is, for a prompt t's free slots hold nothing of, the worth of
// the prompt that p would overwrite on t: the decayed request count of the
// group (first block) in the free slot Ollama would give p. 0 when that
// slot is empty or forgotten, when p finds part of itself there, or when
// no slot is free or t is unknown.
func (s *Slots) Evicts(t Target, p *Prompt, now time.Time) float64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	ss := s.targets[t]
	i, n := s.pickLocked(ss, p.Chain, now.UnixNano())
	if i < 0 || n > 0 || len(ss[i].chain) == 0 || now.UnixNano()-ss[i].at >= int64(s.ttl) {
		return 0
	}
	return s.pop[ss[i].chain[0]].value(now.UnixNano())
}

// Take records that p goes to t, which has n slots, and returns the slot
// it takes, for Release.
func (s *Slots) Take(t Target, n int, p *Prompt, now time.Time) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.countLocked(p.Home(), now.UnixNano())
	ss := s.targets[t]
	if len(ss) != n && n > 0 {
		grown := make([]modelSlot, n)
		copy(grown, ss)
		ss = grown
		s.targets[t] = ss
	}
	i, _ := s.pickLocked(ss, p.Chain, now.UnixNano())
	if i < 0 {
		return -1 // more requests than slots: Ollama queues it; model nothing
	}
	c := p.Chain[:min(len(p.Chain), s.maxBlocks)]
	ss[i] = modelSlot{chain: append(ss[i].chain[:0], c...), busy: true, at: now.UnixNano()}
	return i
}

// Release frees slot i of t (Take's answer; -1 does nothing).
func (s *Slots) Release(t Target, i int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if ss := s.targets[t]; i >= 0 && i < len(ss) {
		ss[i].busy = false
	}
}

// pickLocked is the free slot Ollama gives chain (-1: none free) and the
// blocks it holds of it.
func (s *Slots) pickLocked(ss []modelSlot, chain []uint64, now int64) (int, int) {
	best, n := -1, -1
	for i := range ss {
		if ss[i].busy {
			continue
		}
		k := 0
		if now-ss[i].at < int64(s.ttl) {
			for k < len(chain) && k < len(ss[i].chain) && chain[k] == ss[i].chain[k] {
				k++
			}
		}
		if k > n {
			best, n = i, k
		}
	}
	return best, max(n, 0)
}

// countLocked adds a request of home's group.
func (s *Slots) countLocked(home uint64, now int64) {
	if home == 0 {
		return
	}
	if _, ok := s.pop[home]; !ok && len(s.pop) >= maxPop {
		for h, p := range s.pop {
			if p.value(now) < 0.05 {
				delete(s.pop, h)
			}
		}
		if len(s.pop) >= maxPop {
			clear(s.pop) // all in use: start over rather than grow
		}
	}
	s.pop[home] = popularity{v: s.pop[home].value(now) + 1, at: now}
}
