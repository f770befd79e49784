package affinity

import (
	"sync"
	"time"
)

// Index remembers which prompt blocks and sessions each (backend, model)
// served recently. It holds at most MaxEntries hashes over all backends
// (least recently used out first, about 64 bytes each) and forgets an
// entry TTL after it was last inserted, in step with the backend's
// keep_alive: an idle model leaves memory, and its cache with it.
//
// It is safe for concurrent use; lookups share a read lock.
type Index struct {
	ttl time.Duration

	mu    sync.RWMutex     // guards every field below
	slots map[uint64]int32 // entry key -> node
	nodes []node           // grows to MaxEntries, then reused from the LRU end
	head  int32            // most recently used node; -1: none
	tail  int32            // least recently used node
	max   int
}

// node is one entry on the LRU list.
type node struct {
	key        uint64
	at         int64 // unix nanoseconds of the last insert
	prev, next int32
}

// NewIndex returns an empty index bounded to maxEntries hashes, each
// forgotten ttl after its last insert.
func NewIndex(maxEntries int, ttl time.Duration) *Index {
	return &Index{ttl: ttl, slots: make(map[uint64]int32), head: -1, tail: -1, max: maxEntries}
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
// first, then blocks in chain order) that t did not hold, or held for
// longer than refresh: the ones worth telling the other replicas. The
// slice is appended to buf.
func (x *Index) Insert(t Target, p *Prompt, now time.Time, refresh time.Duration, buf []uint64) []uint64 {
	if p.Session != 0 {
		buf = x.insert(t, []uint64{p.Session}, now, refresh, buf)
	}
	return x.insert(t, p.Chain, now, refresh, buf)
}

// InsertHashes records hashes (another replica's inserts) for t.
func (x *Index) InsertHashes(t Target, hashes []uint64, now time.Time) {
	x.insert(t, hashes, now, 0, nil)
}

func (x *Index) insert(t Target, hashes []uint64, now time.Time, refresh time.Duration, buf []uint64) []uint64 {
	if len(hashes) == 0 || x.max <= 0 {
		return buf
	}
	salt := t.salt()
	at := now.UnixNano()
	x.mu.Lock()
	defer x.mu.Unlock()
	for _, h := range hashes {
		k := entryKey(salt, h)
		if i, ok := x.slots[k]; ok {
			n := &x.nodes[i]
			if refresh > 0 && at-n.at > int64(refresh) {
				buf = append(buf, h)
			}
			n.at = at
			x.moveToFront(i)
			continue
		}
		var i int32
		if len(x.nodes) < x.max {
			x.nodes = append(x.nodes, node{prev: -1, next: -1})
			i = int32(len(x.nodes) - 1)
		} else {
			i = x.tail
			x.unlink(i)
			delete(x.slots, x.nodes[i].key)
		}
		x.nodes[i].key, x.nodes[i].at = k, at
		x.slots[k] = i
		x.pushFront(i)
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

func (x *Index) unlink(i int32) {
	n := &x.nodes[i]
	if n.prev >= 0 {
		x.nodes[n.prev].next = n.next
	} else {
		x.head = n.next
	}
	if n.next >= 0 {
		x.nodes[n.next].prev = n.prev
	} else {
		x.tail = n.prev
	}
	n.prev, n.next = -1, -1
}

func (x *Index) pushFront(i int32) {
	n := &x.nodes[i]
	n.prev, n.next = -1, x.head
	if x.head >= 0 {
		x.nodes[x.head].prev = i
	}
	x.head = i
	if x.tail < 0 {
		x.tail = i
	}
}

func (x *Index) moveToFront(i int32) {
	if x.head == i {
		return
	}
	x.unlink(i)
	x.pushFront(i)
}
