// Package cache is a keyed stale-while-revalidate cache with coalesced
// refreshes: at most one fetch per key runs at a time, whoever asks.
//
// A value younger than TTL is served as is. A value older than TTL but
// younger than Stale is served at once while one background refresh runs. An
// older or missing value is fetched; concurrent callers for the same key wait
// for that one fetch. A failed fetch is cached for the key's error duration
// so a dead backend fails fast instead of being hammered.
package cache

import (
	"context"
	"sync"
	"time"
)

// Fetch loads the value for a key.
type Fetch[V any] func(ctx context.Context, key string) (V, error)

// Options set freshness.
type Options struct {
	TTL   time.Duration // fresh for this long
	Stale time.Duration // then served stale, with a refresh, up to this age
	// ErrorTTL keeps a failed fetch's error (default 1s).
	ErrorTTL time.Duration
	// FetchTimeout bounds one fetch (default 10s).
	FetchTimeout time.Duration
	// OnFetch, if set, is called after every fetch with its outcome.
	OnFetch func(key string, err error, took time.Duration)
}

// Cache holds values by key. It is safe for concurrent use.
type Cache[V any] struct {
	fetch Fetch[V]
	opts  Options
	now   func() time.Time

	ctx    context.Context // ends background refreshes on Close
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu      sync.Mutex // guards entries
	entries map[string]*entry[V]
}

type entry[V any] struct {
	val     V
	err     error
	fetched time.Time // when val or err was stored; zero if never
	has     bool      // val is set
	// inflight is non-nil while a fetch runs; it is closed when it ends.
	inflight chan struct{}
	// gen increases on every Invalidate so that a fetch started before an
	// invalidation cannot store its now-outdated result as fresh.
	gen uint64
}

// New returns a cache; Close stops its background refreshes.
func New[V any](fetch Fetch[V], opts Options) *Cache[V] {
	if opts.ErrorTTL == 0 {
		opts.ErrorTTL = time.Second
	}
	if opts.FetchTimeout == 0 {
		opts.FetchTimeout = 10 * time.Second
	}
	if opts.Stale < opts.TTL {
		opts.Stale = opts.TTL
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &Cache[V]{fetch: fetch, opts: opts, now: time.Now, ctx: ctx, cancel: cancel, entries: map[string]*entry[V]{}}
}

// Get returns the value for key, fetching or refreshing as its age demands.
func (c *Cache[V]) Get(ctx context.Context, key string) (V, error) {
	for {
		now := c.now()
		c.mu.Lock()
		e := c.entryLocked(key)
		age := now.Sub(e.fetched)
		switch {
		case e.has && e.err == nil && age < c.opts.TTL:
			v := e.val
			c.mu.Unlock()
			return v, nil
		case e.has && e.err == nil && age < c.opts.Stale:
			v := e.val
			if e.inflight == nil {
				c.startLocked(key, e, true)
			}
			c.mu.Unlock()
			return v, nil
		case e.err != nil && age < c.opts.ErrorTTL:
			err := e.err
			c.mu.Unlock()
			var zero V
			return zero, err
		}
		wait := e.inflight
		if wait == nil {
			wait = c.startLocked(key, e, false)
		}
		c.mu.Unlock()
		select {
		case <-wait:
		case <-ctx.Done():
			var zero V
			return zero, ctx.Err()
		}
		c.mu.Lock()
		e2 := c.entries[key]
		if e2 == e && !e.fetched.IsZero() {
			v, err := e.val, e.err
			c.mu.Unlock()
			if err != nil {
				var zero V
				return zero, err
			}
			return v, nil
		}
		// Invalidated while we waited: go round again.
		c.mu.Unlock()
	}
}

// Peek returns the value if one is stored and not older than Stale, and
// starts one background fetch when the value is missing or past TTL. It
// never waits for I/O, so the request path can rank on what is known.
func (c *Cache[V]) Peek(key string) (V, bool) {
	now := c.now()
	c.mu.Lock()
	defer c.mu.Unlock()
	e := c.entries[key]
	if e == nil {
		e = &entry[V]{}
		c.entries[key] = e
	}
	age := now.Sub(e.fetched)
	if e.inflight == nil && (!e.has || age >= c.opts.TTL) && (e.err == nil || age >= c.opts.ErrorTTL) {
		c.startLocked(key, e, e.has)
	}
	if !e.has || age >= c.opts.Stale {
		var zero V
		return zero, false
	}
	return e.val, true
}

// Stored returns the stored value, however old, without fetching.
func (c *Cache[V]) Stored(key string) (V, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e := c.entries[key]; e != nil && e.has {
		return e.val, true
	}
	var zero V
	return zero, false
}

// Update replaces a stored value with f's result, atomically, keeping its
// age; f reports false to leave it alone. Nothing happens when no value is
// stored.
func (c *Cache[V]) Update(key string, f func(V) (V, bool)) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e := c.entries[key]; e != nil && e.has {
		if v, ok := f(e.val); ok {
			e.val = v
		}
	}
}

// Set stores a value fetched elsewhere (for example by a live fan-out) as
// fresh.
func (c *Cache[V]) Set(key string, v V) {
	now := c.now()
	c.mu.Lock()
	e := c.entryLocked(key)
	e.val, e.err, e.has, e.fetched = v, nil, true, now
	c.mu.Unlock()
}

// entryLocked returns key's entry, adding an empty one if there is none.
// c.mu must be held.
func (c *Cache[V]) entryLocked(key string) *entry[V] {
	e := c.entries[key]
	if e == nil {
		e = &entry[V]{}
		c.entries[key] = e
	}
	return e
}

// Invalidate drops key so the next Get fetches; with no keys it drops all.
// A fetch already running keeps running but its result is not stored.
func (c *Cache[V]) Invalidate(keys ...string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(keys) == 0 {
		for k, e := range c.entries {
			c.dropLocked(k, e)
		}
		return
	}
	for _, k := range keys {
		if e := c.entries[k]; e != nil {
			c.dropLocked(k, e)
		}
	}
}

func (c *Cache[V]) dropLocked(key string, e *entry[V]) {
	delete(c.entries, key)
	e.gen++
}

// Close stops background refreshes and waits for them.
func (c *Cache[V]) Close() {
	c.cancel()
	c.wg.Wait()
}

// startLocked begins the one fetch for e. Caller holds c.mu.
func (c *Cache[V]) startLocked(key string, e *entry[V], background bool) chan struct{} {
	done := make(chan struct{})
	e.inflight = done
	gen := e.gen
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		ctx, cancel := context.WithTimeout(c.ctx, c.opts.FetchTimeout)
		start := c.now()
		v, err := c.fetch(ctx, key)
		cancel()
		end := c.now()
		if c.opts.OnFetch != nil {
			c.opts.OnFetch(key, err, end.Sub(start))
		}
		c.mu.Lock()
		if e.gen == gen {
			if err == nil {
				e.val, e.has = v, true
			}
			// A failed background refresh keeps the stale value serving;
			// a failed foreground fetch is remembered for ErrorTTL.
			if err == nil || !background || !e.has {
				e.err = err
				e.fetched = end
			}
		}
		e.inflight = nil
		c.mu.Unlock()
		close(done)
	}()
	return done
}
