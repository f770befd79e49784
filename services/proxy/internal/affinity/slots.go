package affinity

import (
	"math"
	"math/rand/v2"
	"slices"
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

	// salt makes this model's take and ticket numbers unique over the
	// fleet (a random start), so other replicas can name them.
	salt uint64

	mu      sync.Mutex
	ticket  uint64 // the last Warm's, from salt
	seq     uint64 // the last take's (Taken), from salt
	targets map[Target][]modelSlot
	// pending holds, per (backend, model), takes that found every
	// modelled slot busy, oldest first: each takes the next slot released
	// (a fleet's router grants a slot on its in-flight counts, which can
	// run ahead of the slot events this model hears; or the backend
	// queues the request). At most the target's slot count.
	pending map[Target][]pendingTake
	// timing is, per (backend, model), how long its slots stay busy:
	// what a warm prompt takes and what an uncached block adds.
	timing map[Target]*slotTiming
	// remote maps another replica's takes (SlotEvent.ID) to this
	// model's take, until their release.
	remote map[remoteKey]remoteTake
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

type remoteKey struct {
	replica string
	id      uint64
}

type remoteTake struct {
	t    Target
	take Taken
	at   int64
}

// Taken names one take in a model, for its release: unique over the
// fleet, so that a replica waiting for a slot can name the take holding
// it (SlotEvent.Owner) to the others.
type Taken uint64

// pendingTake is a take that found no free slot in the model.
type pendingTake struct {
	take   Taken
	chain  []uint64 // what a slot keeps of the prompt
	whole  int      // the prompt's blocks
	at     int64
	remote bool
}

// maxRemote bounds Slots.remote: takes whose release was lost are
// forgotten beyond it, the oldest first.
const maxRemote = 4096

// SlotEvent is a take or a release of a slot by another replica's grant,
// or a request of it joining or leaving a slot's line (JoinWarm), shared
// so that every replica's model sees the whole fleet's requests and
// waiters (Sharer; docs/routing.md).
type SlotEvent struct {
	T    Target
	Kind SlotEventKind
	// ID is the take (Taken), repeated by its release; for a join or a
	// leave, the waiter's ticket.
	ID uint64
	// Slots is T's slots (a take; 0 in a release); Chain the prompt's
	// leading blocks, at most a slot's context (nil: a release).
	Slots int
	Chain []uint64
	// Ticket is, for a take, the waiter it was (0: none), so that it
	// takes the slot kept for it.
	Ticket uint64
	// For a join: the take holding the slot waited for, when the waiter
	// joined and how long it waits at most (Unix microseconds). For a
	// take, At is when it was taken (0: unknown, when heard), from which
	// the others reckon when the slot should be back.
	Owner     uint64
	At, Until int64
}

// SlotEventKind says what a SlotEvent is.
type SlotEventKind uint8

const (
	// SlotTake is a take (Chain not nil) or a release (Chain nil).
	SlotTake SlotEventKind = iota
	// SlotJoin is a request joining the line of the slot Owner holds.
	SlotJoin
	// SlotLeave is a waiter leaving its line (it took a slot or gave up).
	SlotLeave
)

// Keep is the part of chain a slot keeps (at most its context), for a
// SlotEvent.
func (s *Slots) Keep(chain []uint64) []uint64 {
	return chain[:min(len(chain), s.maxBlocks)]
}

// Apply models another replica's takes and releases, in its order.
func (s *Slots) Apply(replica string, events []SlotEvent, now time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := now.UnixNano()
	for _, ev := range events {
		switch ev.Kind {
		case SlotJoin:
			s.joinRemoteLocked(ev, n)
			continue
		case SlotLeave:
			s.leaveLocked(ev.T, ev.ID, n)
			continue
		}
		k := remoteKey{replica, ev.ID}
		if ev.Chain == nil {
			if rt, ok := s.remote[k]; ok {
				delete(s.remote, k)
				s.releaseLocked(rt.t, rt.take, n)
			}
			continue
		}
		if len(s.remote) >= maxRemote {
			var oldest remoteKey
			first := true
			for rk, rt := range s.remote {
				if first || rt.at < s.remote[oldest].at {
					oldest, first = rk, false
				}
			}
			delete(s.remote, oldest)
		}
		var w *Warm
		if ev.Ticket != 0 {
			w = &Warm{ticket: ev.Ticket}
		}
		at := n
		if ev.At > 0 {
			at = min(ev.At*1000, n) // the sender's clock, never ahead of this one
		}
		id := s.takeAsLocked(ev.T, ev.Slots, ev.Chain, at, w, true, Taken(ev.ID))
		s.remote[k] = remoteTake{t: ev.T, take: id, at: n}
	}
}

// modelSlot is one slot: the chain of the last prompt it took.
type modelSlot struct {
	chain []uint64
	busy  bool
	take  Taken // the take holding it (while busy) or that held it last
	at    int64 // unix nanoseconds it was last taken
	// uncached is how many of the prompt's blocks the slot did not hold
	// when it was taken (what the backend evaluated).
	uncached int
	// line holds the requests waiting for this slot (JoinWarm, this
	// replica's and, shared, the others'), in the order they joined;
	// heldFor the one it is kept for while free, until heldUntil (Unix
	// nanoseconds: a waiter's longest wait, after which a lost leave no
	// longer keeps it).
	line      []waiting
	heldFor   uint64
	heldUntil int64
	heldAt    int64 // when heldFor joined the line
	// remote: the slot's request came through another replica (Apply),
	// whose release is heard only with the sharing's delay.
	remote bool
}

// waiting is one request in a slot's line: its ticket, when it joined and
// until when it waits at most (Unix nanoseconds).
type waiting struct {
	ticket    uint64
	at, until int64
}

// keptLocked reports whether the slot is kept for a waiter now.
func (sl *modelSlot) keptLocked(now int64) bool {
	return sl.heldFor != 0 && now < sl.heldUntil
}

// slotTiming learns, from Take to Release, how long a request holds a
// slot of one (backend, model): warm is the moving average for prompts
// found (almost) whole in their slot; extra and uncached the moving
// averages, over the others, of the time beyond warm and of the blocks
// evaluated, so extra / uncached is what an uncached block costs
// (weighted by blocks: a follow-up turn's few new blocks count for as
// little as they weigh). Nanoseconds and blocks, 0 until measured.
type slotTiming struct {
	warm, extra, uncached float64
	// released is closed and replaced whenever a slot is released, for
	// requests waiting for a warm slot (WarmSlot).
	released chan struct{}
}

// timingWeight is the weight of a new sample in the moving averages.
const timingWeight = 0.1

// NewSlots returns an empty model; a slot's prompt is forgotten ttl after
// it was taken (the model's keep_alive), and at most maxBlocks leading
// blocks of each prompt are kept (a slot's context).
func NewSlots(ttl time.Duration, maxBlocks int) *Slots {
	salt := rand.Uint64() >> 1 // room to count up without wrapping to 0
	return &Slots{ttl: ttl, maxBlocks: max(maxBlocks, 1), salt: salt, ticket: salt, seq: salt, targets: map[Target][]modelSlot{}, pending: map[Target][]pendingTake{},
		pop: map[uint64]popularity{}, timing: map[Target]*slotTiming{}, remote: map[remoteKey]remoteTake{}}
}

// Free is the longest run of p's leading blocks that a free slot of t
// holds: what t would serve from cache if p reached it now.
func (s *Slots) Free(t Target, p *Prompt, now time.Time) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, n := s.pickLocked(s.targets[t], p.Chain, now.UnixNano(), 0)
	return n
}

// FreeFor is Free for the request waiting as w (nil: none), to which the
// slot kept for it counts as free.
func (s *Slots) FreeFor(t Target, p *Prompt, now time.Time, w *Warm) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, n := s.pickLocked(s.targets[t], p.Chain, now.UnixNano(), w.id())
	return n
}

func (w *Warm) id() uint64 {
	if w == nil {
		return 0
	}
	return w.ticket
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
	i, n := s.pickLocked(ss, p.Chain, now.UnixNano(), 0)
	if i < 0 || n > 0 || len(ss[i].chain) == 0 || now.UnixNano()-ss[i].at >= int64(s.ttl) {
		return 0
	}
	g := ss[i].chain[0]
	return s.pop[g].value(now.UnixNano()) / float64(s.copiesLocked(g, now.UnixNano()))
}

// maxKeptBlock bounds how long a kept slot may hold back other requests
// (Kept): a waiter due later than this does not.
const maxKeptBlock = 5 * time.Second

// Kept is how many of t's free slots are kept for a request waiting in
// their line (JoinWarm) that joined before before, other than ticket's;
// and the soonest such keeping lapses. Ollama knows nothing of keeping:
// any request sent to t while its free slots are all kept would take
// one (the lowest), and the waiter, having waited, would be evaluated
// cold. So the router leaves them to their waiters, as to requests that
// came first.
func (s *Slots) Kept(t Target, now, before time.Time, ticket uint64) (n int, lapse time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	nn, b := now.UnixNano(), before.UnixNano()
	var soonest int64
	for _, sl := range s.targets[t] {
		if sl.busy || !sl.keptLocked(nn) || sl.heldFor == ticket || sl.heldAt >= b || sl.heldUntil-nn > int64(maxKeptBlock) {
			continue
		}
		n++
		if soonest == 0 || sl.heldUntil < soonest {
			soonest = sl.heldUntil
		}
	}
	if n > 0 {
		lapse = time.Unix(0, soonest)
	}
	return n, lapse
}

// copiesLocked is how many slots, over every target, hold a prompt of
// group g (first block g): at least 1 for a group Evicts looks at.
func (s *Slots) copiesLocked(g uint64, now int64) int {
	n := 0
	for _, ss := range s.targets {
		for _, sl := range ss {
			if len(sl.chain) > 0 && sl.chain[0] == g && now-sl.at < int64(s.ttl) {
				n++
			}
		}
	}
	return max(n, 1)
}

// Take records that p goes to t, which has n slots, and returns the take,
// for Release. A take that finds every modelled slot busy waits in the
// model for the next slot released (the slot the backend gave it was
// freed by a release this model has not heard yet, or the backend queues
// it); beyond as many waiting as t has slots, it is not modelled.
func (s *Slots) Take(t Target, n int, p *Prompt, now time.Time) Taken {
	return s.TakeFor(t, n, p, now, nil)
}

// TakeFor is Take for the request waiting as w (nil: none).
func (s *Slots) TakeFor(t Target, n int, p *Prompt, now time.Time, w *Warm) Taken {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.takeLocked(t, n, p.Chain, now.UnixNano(), w, false)
}

func (s *Slots) takeLocked(t Target, n int, chain []uint64, now int64, w *Warm, remote bool) Taken {
	s.seq++
	return s.takeAsLocked(t, n, chain, now, w, remote, Taken(s.seq))
}

// takeAsLocked is takeLocked for a take named id.
func (s *Slots) takeAsLocked(t Target, n int, chain []uint64, now int64, w *Warm, remote bool, id Taken) Taken {
	if len(chain) > 0 {
		s.countLocked(chain[0], now)
	}
	ss := s.targets[t]
	if len(ss) != n && n > 0 {
		grown := make([]modelSlot, n)
		copy(grown, ss)
		ss = grown
		s.targets[t] = ss
	}
	c := chain[:min(len(chain), s.maxBlocks)]
	// The backend knows nothing of slots kept for waiting requests: it
	// gives the request the free slot holding most of its prompt, kept or
	// not (a waiter whose slot goes is first in line again).
	i, _ := s.pickLocked(ss, chain, now, anyKept)
	if i < 0 {
		if len(s.pending[t]) < len(ss) { // beyond: more takes waiting than slots, model nothing
			s.pending[t] = append(s.pending[t], pendingTake{take: id, chain: slices.Clone(c), whole: len(chain), at: now, remote: remote})
		}
		return id
	}
	if ss[i].heldFor == w.id() {
		ss[i].heldFor = 0
	}
	s.placeLocked(&ss[i], c, len(chain), id, now, remote)
	return id
}

// placeLocked puts a take of chain (c: the part a slot keeps; whole: the
// prompt's blocks) in free slot sl. A request the slot was kept for is
// first in its line again.
func (s *Slots) placeLocked(sl *modelSlot, c []uint64, whole int, id Taken, at int64, remote bool) {
	if sl.heldFor != 0 {
		sl.line = slices.Insert(sl.line, 0, waiting{ticket: sl.heldFor, at: sl.heldAt, until: sl.heldUntil})
		sl.heldFor = 0
	}
	held := matchLen(c, sl.chain)
	if sl.at != 0 && at-sl.at >= int64(s.ttl) {
		held = 0
	}
	sl.chain, sl.busy, sl.take, sl.at, sl.uncached, sl.remote = append(sl.chain[:0], c...), true, id, at, whole-held, remote
}

// Release ends take id on t (Take's answer; 0 does nothing) and learns
// from how long its slot was held.
func (s *Slots) Release(t Target, id Taken) {
	s.release(t, id, time.Now())
}

func (s *Slots) release(t Target, id Taken, now time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	at, u, ok := s.releaseLocked(t, id, now.UnixNano())
	if !ok {
		return
	}
	tm := s.timingLocked(t)
	d := float64(now.UnixNano() - at)
	if d <= 0 {
		return
	}
	switch {
	case u <= 1: // found whole (a follow-up's new message may be a block)
		tm.warm = ewma(tm.warm, d)
	case tm.warm > 0:
		tm.extra, tm.uncached = ewma(tm.extra, max(d-tm.warm, 0)), ewma(tm.uncached, float64(u))
	}
}

// releaseLocked ends take id on t: frees its slot and hands it on. ok
// says the take held a slot (not when it was still waiting for one, or
// is unknown); at and uncached are the take's, for learning the timing.
func (s *Slots) releaseLocked(t Target, id Taken, now int64) (at int64, uncached int, ok bool) {
	if id == 0 {
		return 0, 0, false
	}
	if ps := s.pending[t]; len(ps) > 0 {
		if k := slices.IndexFunc(ps, func(p pendingTake) bool { return p.take == id }); k >= 0 {
			s.pending[t] = slices.Delete(ps, k, k+1)
			return 0, 0, false
		}
	}
	ss := s.targets[t]
	for i := range ss {
		if ss[i].busy && ss[i].take == id {
			at, uncached = ss[i].at, ss[i].uncached
			ss[i].busy = false // take stays: a late join may name it
			s.handOnLocked(t, i, now)
			return at, uncached, true
		}
	}
	return 0, 0, false
}

// block is what an uncached block adds to a request's time (0: unknown).
func (tm *slotTiming) block() float64 {
	if tm.uncached == 0 {
		return 0
	}
	return tm.extra / tm.uncached
}

func ewma(avg, sample float64) float64 {
	if avg == 0 {
		return sample
	}
	return avg + timingWeight*(sample-avg)
}

func (s *Slots) timingLocked(t Target) *slotTiming {
	tm := s.timing[t]
	if tm == nil {
		tm = &slotTiming{released: make(chan struct{})}
		s.timing[t] = tm
	}
	return tm
}

// Warm is a request waiting for a busy slot that holds part of its
// prompt (Slots.JoinWarm): once the slot is released it is kept for the
// first request in its line, which then finds it free while the others
// do not.
type Warm struct {
	t      Target
	slot   int
	ticket uint64
	// owner is the take holding the slot when w joined; at and until when
	// w joined and how long it waits at most (Unix nanoseconds).
	owner     uint64
	at, until int64
	// Wait is how long the slot's prefix would take to evaluate: the
	// longest it is worth waiting for.
	Wait time.Duration
}

// joinMargin: a request joins a slot's line only if the slot should be
// back within this share of what waiting saves (the prefix's evaluation
// time, which also bounds the wait). The estimate of a busy slot's
// release runs late by the error in its holder's length; a waiter that
// joined on a thin margin then waits its whole bound and is evaluated cold
// after all, about twice a cold prompt's time: the tail of a time to first
// token (docs/routing-bench.md). Evaluating it now costs one cold prompt.
const joinMargin = 0.75

// JoinWarm is for a prompt that no free slot of targets holds any of:
// when a busy slot of one of them holds part of it, and should be
// released (after the requests already in its line, each as long as a
// warm request) well before evaluating that part would take (within
// joinMargin of it; both as learnt from this replica's grants), p joins
// that slot's line, whichever replica's request holds the slot (a slot
// another replica took is reckoned from when it was taken). ok is false
// when no such slot is known, or nothing was measured yet. The caller
// must Leave.
func (s *Slots) JoinWarm(targets []Target, p *Prompt, now time.Time) (w *Warm, ok bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := now.UnixNano()
	for _, t := range targets {
		if _, k := s.pickLocked(s.targets[t], p.Chain, n, 0); k > 0 {
			return nil, false // a free slot holds it: no need to wait
		}
	}
	best := 0.0
	for _, t := range targets {
		tm := s.timing[t]
		if tm == nil || tm.warm == 0 || tm.block() == 0 {
			continue
		}
		block := tm.block()
		for i, sl := range s.targets[t] {
			if (!sl.busy && !sl.keptLocked(n)) || n-sl.at >= int64(s.ttl) {
				continue
			}
			k := matchLen(p.Chain, sl.chain)
			saves := float64(k) * block
			left := tm.warm // free, kept for a waiter who will hold it as long
			if sl.busy {
				left = max(tm.warm+float64(sl.uncached)*block-float64(n-sl.at), 0)
			}
			left += float64(len(sl.line)) * tm.warm
			if k > 0 && left < saves*joinMargin && saves-left > best {
				best, w = saves-left, &Warm{t: t, slot: i, Wait: time.Duration(saves)}
			}
		}
	}
	if w == nil {
		return nil, false
	}
	s.ticket++
	w.ticket = s.ticket
	sl := &s.targets[w.t][w.slot]
	w.owner, w.at, w.until = uint64(sl.take), n, n+int64(w.Wait)
	sl.line = append(sl.line, waiting{ticket: w.ticket, at: n, until: w.until})
	return w, true
}

// Ready reports whether w's slot is free for it now; if not, left is when
// it should be (after the requests before w in the line), released a
// channel closed at the next release of a slot of its target (or when
// another replica's waiter joins a line ahead of others), and holds
// whether the slot still holds part of p.
func (s *Slots) Ready(w *Warm, p *Prompt, now time.Time) (ready bool, left time.Duration, released <-chan struct{}, holds bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := now.UnixNano()
	sl := s.targets[w.t][w.slot]
	if matchLen(p.Chain, sl.chain) == 0 || n-sl.at >= int64(s.ttl) {
		return false, 0, nil, false
	}
	if !sl.busy && (!sl.keptLocked(n) || sl.heldFor == w.ticket) {
		return true, 0, nil, true
	}
	tm := s.timingLocked(w.t)
	ahead := 0
	if sl.keptLocked(n) && sl.heldFor != w.ticket {
		ahead++
	}
	for _, e := range sl.line {
		if e.ticket == w.ticket {
			break
		}
		ahead++
	}
	if sl.busy {
		left = time.Duration(max(tm.warm+float64(sl.uncached)*tm.block()-float64(n-sl.at), 0))
	}
	return false, left + time.Duration(float64(ahead)*tm.warm), tm.released, true
}

// Waiting is how many requests wait for a warm slot (JoinWarm) now.
func (s *Slots) Waiting() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, ss := range s.targets {
		for _, sl := range ss {
			n += len(sl.line)
			if sl.heldFor != 0 {
				n++
			}
		}
	}
	return n
}

// Leave takes w out of its slot's line, and gives the slot up if it was
// kept for w (w took another, or gave up).
func (s *Slots) Leave(w *Warm) {
	if w == nil {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.leaveLocked(w.t, w.ticket, time.Now().UnixNano())
}

// leaveLocked takes ticket out of the lines of t's slots, and gives up
// the slot kept for it.
func (s *Slots) leaveLocked(t Target, ticket uint64, now int64) {
	ss := s.targets[t]
	for i := range ss {
		ss[i].line = slices.DeleteFunc(ss[i].line, func(e waiting) bool { return e.ticket == ticket })
		if ss[i].heldFor == ticket {
			ss[i].heldFor = 0
			s.handOnLocked(t, i, now)
		}
	}
}

// handOnLocked passes on slot i of t, just freed: to the oldest take
// waiting for a slot of t (it already runs there, in the backend), which
// takes the free slot Ollama would give it, else the slot is kept for the
// first request in its line; and wakes the waiters of t.
func (s *Slots) handOnLocked(t Target, i int, now int64) {
	ss := s.targets[t]
	ps := s.pending[t]
	for len(ps) > 0 && now-ps[0].at >= int64(s.ttl) {
		ps = ps[1:] // its release was lost
	}
	if len(ps) > 0 {
		p := ps[0]
		ps = ps[1:]
		j, _ := s.pickLocked(ss, p.chain, now, anyKept) // it runs already: kept slots too
		if j < 0 {
			j = i
		}
		s.placeLocked(&ss[j], p.chain, p.whole, p.take, p.at, p.remote)
	}
	if len(ps) == 0 {
		delete(s.pending, t)
	} else {
		s.pending[t] = ps
	}
	if sl := &ss[i]; !sl.busy && !sl.keptLocked(now) {
		sl.heldFor = 0
		for len(sl.line) > 0 && sl.heldFor == 0 {
			if e := sl.line[0]; e.until > now {
				sl.heldFor, sl.heldUntil, sl.heldAt = e.ticket, e.until, e.at
			}
			sl.line = sl.line[1:]
		}
	}
	s.wakeLocked(t)
}

// wakeLocked wakes the requests waiting for a slot of t (Ready's
// released), to look at their slot again.
func (s *Slots) wakeLocked(t Target) {
	tm := s.timingLocked(t)
	close(tm.released)
	tm.released = make(chan struct{})
}

func matchLen(chain, held []uint64) int {
	k := 0
	for k < len(chain) && k < len(held) && chain[k] == held[k] {
		k++
	}
	return k
}

// anyKept, as pickLocked's ticket, counts every slot kept for a waiting
// request as free (the backend knows nothing of keeping).
const anyKept = ^uint64(0)

// pickLocked is the free slot Ollama gives chain (-1: none free) and the
// blocks it holds of it; a slot kept for a waiting request (Warm) is
// free only to that request's ticket (or anyKept).
func (s *Slots) pickLocked(ss []modelSlot, chain []uint64, now int64, ticket uint64) (int, int) {
	best, n := -1, -1
	for i := range ss {
		if ss[i].busy || (ss[i].keptLocked(now) && ss[i].heldFor != ticket && ticket != anyKept) {
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

// Held is the longest run of p's leading blocks that any slot of t holds,
// busy or free.
func (s *Slots) Held(t Target, p *Prompt, now time.Time) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	best := 0
	for _, sl := range s.targets[t] {
		if now.UnixNano()-sl.at >= int64(s.ttl) {
			continue
		}
		k := 0
		for k < len(p.Chain) && k < len(sl.chain) && p.Chain[k] == sl.chain[k] {
			k++
		}
		best = max(best, k)
	}
	return best
}

// Seen reports whether p's group (its first block) was asked through this
// replica lately (its decayed count not yet forgotten).
func (s *Slots) Seen(p *Prompt) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, ok := s.pop[p.Home()]
	return ok
}
