package fleetsync

import (
	"sync"
	"time"
)

// allBackends is the coalescer's key for an invalidation of every backend
// when the backends are not known.
const allBackends = "\x00all"

// maxRemembered is how many names the coalescer keeps before it forgets
// those whose interval has passed.
const maxRemembered = 1024

// coalescer applies invalidations from other replicas at most once per
// backend per interval, however many arrive: the first at once, the rest
// merged into one at the end of the interval. Each applied invalidation
// costs a backend refresh on the next request, so this bounds what a
// flood, forged or not, can cost a backend to one refresh per interval,
// and delays a genuine invalidation by at most one interval.
type coalescer struct {
	every time.Duration
	apply Invalidator

	mu      sync.Mutex // guards last and pending
	last    map[string]time.Time
	pending map[string]bool
}

func newCoalescer(every time.Duration, apply Invalidator) *coalescer {
	return &coalescer{every: every, apply: apply, last: map[string]time.Time{}, pending: map[string]bool{}}
}

// offer applies what is due of keys at once and keeps the rest pending. It
// reports how many it held back.
func (c *coalescer) offer(now time.Time, keys []string) (held int) {
	var due []string
	c.mu.Lock()
	for _, k := range keys {
		if t, ok := c.last[k]; ok && now.Sub(t) < c.every {
			c.pending[k] = true
			held++
			continue
		}
		c.last[k] = now
		due = append(due, k)
	}
	if len(c.last) > maxRemembered {
		// Names nobody sends twice within an interval need not be kept.
		for k, t := range c.last {
			if !c.pending[k] && now.Sub(t) >= c.every {
				delete(c.last, k)
			}
		}
	}
	c.mu.Unlock()
	c.run(due)
	return held
}

// flush applies the pending keys whose interval has passed and returns how
// long until the next one is due (0: none pending).
func (c *coalescer) flush(now time.Time) time.Duration {
	var due []string
	var next time.Duration
	c.mu.Lock()
	for k := range c.pending {
		if wait := c.every - now.Sub(c.last[k]); wait > 0 {
			if next == 0 || wait < next {
				next = wait
			}
			continue
		}
		delete(c.pending, k)
		c.last[k] = now
		due = append(due, k)
	}
	c.mu.Unlock()
	c.run(due)
	return next
}

func (c *coalescer) run(keys []string) {
	if len(keys) == 0 || c.apply == nil {
		return
	}
	for _, k := range keys {
		if k == allBackends {
			c.apply()
			return
		}
	}
	c.apply(keys...)
}

// pendingKeys lists what is held back (for tests).
func (c *coalescer) pendingKeys() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	keys := make([]string, 0, len(c.pending))
	for k := range c.pending {
		keys = append(keys, k)
	}
	return keys
}
