package affinity

import (
	"sync"
	"time"
)

// Index remembers which prompt blocks and sessions each (backend, model)
// served recently. It holds at most MaxEntries hashes over all backends
// and, with PerTarget, at most that many per (backend, model): what the
// backend's slots can hold, since an index that remembers more than the
// backend keeps sends requests to caches long overwritten. Least
// recently used entries go first; an entry is forgotten TTL after it was
// last inserted, in step with the backend's keep_alive (an idle model
// leaves memory, and its cache with it).
//
// It is safe for concurrent use; lookups share a read lock.
type Index struct {
	ttl       time.Duration
	perTarget func(Target) int

	mu      sync.RWMutex     // guards every field below
	slots   map[uint64]int32 // entry key -> node
	nodes   []node           // grows to max, then reused from the LRU end
	all     lru              // every node, most recently used first
	targets map[Target]*targetLRU
	max     int
}

// lru is a list's ends; -1: none.
type lru struct{ head, tail int32 }

// targetLRU is one target's entries, most recently used first.
type targetLRU struct {
	lru
	n, limit int
	key      Target
}

// node is one entry, on the list of all entries and on its target's.
type node struct {
	key          uint64
	at           int64 // unix nanoseconds of the last insert
	heard        int64 // when the other replicas last heard of it (sent or received)
	prev, next   int32 // on Index.all
	tprev, tnext int32 // on its target's list
	t            *targetLRU
}

// IndexOption configures NewIndex.
type IndexOption func(*Index)

// PerTarget bounds each target's entries to limit(t) (0: only the total
// bound). It is asked once per target.
func PerTarget(limit func(Target) int) IndexOption {
	return func(x *Index) { x.perTarget = limit }
}

// NewIndex returns an empty index bounded to maxEntries hashes, each
// forgotten ttl after its last insert.
func NewIndex(maxEntries int, ttl time.Duration, opts ...IndexOption) *Index {
	x := &Index{ttl: ttl, slots: make(map[uint64]int32), all: lru{-1, -1}, targets: map[Target]*targetLRU{}, max: maxEntries}
	for _, o := range opts {
		o(x)
	}
	return x
}

// Target names one (backend, model) whose cache the index tracks.
type Target struct{ Backend, Model string }

// salt derives the target's part of its entries' keys (FNV-1a: a fixed
// function, so that replicas agree).
func (t Target) salt() uint64 {
	h := uint64(14695981039346656037)
	for i := 0; i < len(t.Backend); i++ {
		h = (h ^ uint64(t.Backend[i])) * 1099511628211
	}
	h = (h ^ 0xff) * 1099511628211
	for i := 0; i < len(t.Model); i++ {
		h = (h ^ uint64(t.Model[i])) * 1099511628211
	}
	return h
}

// entryKey is one hash of one target.
func entryKey(salt, h uint64) uint64 { return finish(salt ^ h*prime) }

// Match is how much of a prompt one target holds.
type Match struct {
	// Session: the target served the prompt's session, last at this time
	// (unix nanoseconds; 0: never or forgotten).
	Session int64
	// Blocks is the number of leading blocks of the chain it holds.
	Blocks int
	// Evicts is, when the target holds nothing of the prompt, the worth
	// of the prompt it would overwrite there (Slots.Evicts; 0: nothing or
	// unknown). Not affinity: Better and Zero ignore it.
	Evicts float64
}

// Better reports whether m is the stronger affinity: an explicit session
// first (the most recent), then the longer prefix.
func (m Match) Better(o Match) bool {
	if (m.Session != 0) != (o.Session != 0) {
		return m.Session != 0
	}
	if m.Session != o.Session {
		return m.Session > o.Session
	}
	return m.Blocks > o.Blocks
}

// Zero reports no affinity at all.
func (m Match) Zero() bool { return m.Session == 0 && m.Blocks == 0 }

// Lookup returns what t holds of p: the leading blocks of its chain that
// are all there (a gap ends the prefix the backend can reuse), and its
// session.
func (x *Index) Lookup(t Target, p *Prompt, now time.Time) Match {
	salt := t.salt()
	fresh := now.UnixNano() - int64(x.ttl)
	var m Match
	x.mu.RLock()
	defer x.mu.RUnlock()
	if p.Session != 0 {
		if i, ok := x.slots[entryKey(salt, p.Session)]; ok && x.nodes[i].at > fresh {
			m.Session = x.nodes[i].at
		}
	}
	for _, h := range p.Chain {
		i, ok := x.slots[entryKey(salt, h)]
		if !ok || x.nodes[i].at <= fresh {
			break
		}
		m.Blocks++
	}
	return m
}

// Insert records that t serves p now. It returns the hashes (session
// first, then blocks in chain order) that t did not hold, or that the
// replicas last heard of (sent by this one or received from another) more
// than refresh ago: the ones worth telling the others, so that their
// copies neither expire nor fall behind in least-recently-used order while
// the prompt is in use (refresh 0: report nothing). The slice is appended
// to buf.
func (x *Index) Insert(t Target, p *Prompt, now time.Time, refresh time.Duration, buf []uint64) []uint64 {
	if p.Session != 0 {
		buf = x.insert(t, []uint64{p.Session}, now, refresh, buf)
	}
	return x.insert(t, p.Chain, now, refresh, buf)
}

// InsertHashes records hashes (another replica's inserts) for t; the
// replicas have now heard of them.
func (x *Index) InsertHashes(t Target, hashes []uint64, now time.Time) {
	x.insert(t, hashes, now, -1, nil)
}

// insert records hashes for t; refresh > 0 reports what the others should
// hear (Insert), refresh < 0 marks them heard (InsertHashes).
func (x *Index) insert(t Target, hashes []uint64, now time.Time, refresh time.Duration, buf []uint64) []uint64 {
	if len(hashes) == 0 || x.max <= 0 {
		return buf
	}
	salt := t.salt()
	at := now.UnixNano()
	x.mu.Lock()
	defer x.mu.Unlock()
	tl := x.targets[t]
	if tl == nil {
		tl = &targetLRU{lru: lru{-1, -1}, key: t}
		if x.perTarget != nil {
			tl.limit = x.perTarget(t)
		}
		x.targets[t] = tl
	}
	for _, h := range hashes {
		k := entryKey(salt, h)
		if i, ok := x.slots[k]; ok {
			n := &x.nodes[i]
			switch {
			case refresh < 0:
				n.heard = at
			case refresh > 0 && at-n.heard > int64(refresh):
				buf = append(buf, h)
				n.heard = at
			}
			n.at = at
			x.touch(i)
			continue
		}
		var i int32
		switch {
		case tl.limit > 0 && tl.n >= tl.limit:
			i = tl.tail // the target is full: its own oldest goes
			x.remove(i, tl)
		case len(x.nodes) < x.max:
			x.nodes = append(x.nodes, node{})
			i = int32(len(x.nodes) - 1)
		default:
			i = x.all.tail
			x.remove(i, tl)
		}
		x.nodes[i] = node{key: k, at: at, t: tl}
		x.slots[k] = i
		x.pushFront(i)
		if refresh != 0 {
			x.nodes[i].heard = at
		}
		if refresh > 0 {
			buf = append(buf, h)
		}
	}
	return buf
}

// Len is the number of hashes held (expired ones included until they are
// reused: the bound is on memory, not on what is fresh).
func (x *Index) Len() int {
	x.mu.RLock()
	defer x.mu.RUnlock()
	return len(x.slots)
}

// remove takes node i out of both lists and the map, and forgets its
// target once empty (but not keep, the target being inserted into).
func (x *Index) remove(i int32, keep *targetLRU) {
	n := &x.nodes[i]
	t := n.t
	x.unlink(i)
	delete(x.slots, n.key)
	if t.n == 0 && t != keep {
		delete(x.targets, t.key)
	}
}

func (x *Index) unlink(i int32) {
	n := &x.nodes[i]
	if n.prev >= 0 {
		x.nodes[n.prev].next = n.next
	} else {
		x.all.head = n.next
	}
	if n.next >= 0 {
		x.nodes[n.next].prev = n.prev
	} else {
		x.all.tail = n.prev
	}
	t := n.t
	if n.tprev >= 0 {
		x.nodes[n.tprev].tnext = n.tnext
	} else {
		t.head = n.tnext
	}
	if n.tnext >= 0 {
		x.nodes[n.tnext].tprev = n.tprev
	} else {
		t.tail = n.tprev
	}
	t.n--
	n.prev, n.next, n.tprev, n.tnext = -1, -1, -1, -1
}

func (x *Index) pushFront(i int32) {
	n := &x.nodes[i]
	n.prev, n.next = -1, x.all.head
	if x.all.head >= 0 {
		x.nodes[x.all.head].prev = i
	}
	x.all.head = i
	if x.all.tail < 0 {
		x.all.tail = i
	}
	t := n.t
	n.tprev, n.tnext = -1, t.head
	if t.head >= 0 {
		x.nodes[t.head].tprev = i
	}
	t.head = i
	if t.tail < 0 {
		t.tail = i
	}
	t.n++
}

// touch makes node i the most recently used, on both lists.
func (x *Index) touch(i int32) {
	if x.all.head == i && x.nodes[i].t.head == i {
		return
	}
	x.unlink(i)
	x.pushFront(i)
}
