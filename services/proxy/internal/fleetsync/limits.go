package fleetsync

import (
	"fmt"
	"log/slog"
	"math"
	"sync"
	"time"

	"github.com/droverhq/drover/pkg/apikey"
	"github.com/droverhq/drover/pkg/config"
	"github.com/droverhq/drover/services/proxy/internal/routing"
)

// Limits bound what another replica may claim, so that one bad replica (a
// bug, or a forger holding the proxies' NATS credentials) cannot stall the
// fleet with counts no replica could have. A message that breaks them is
// dropped whole and logged; see docs/fleet.md.
type Limits struct {
	// Backends are the names this replica routes to: counts and
	// invalidations for other names are dropped. Empty: not checked.
	Backends []string
	// MaxInFlight is the largest cap any backend has (its max_concurrency
	// or routing.max_concurrency): no replica can hold more on one backend
	// and model. Zero: not checked.
	MaxInFlight int
	// MaxQueue is routing.queue.max_length: demand is cut to MaxInFlight
	// plus MaxQueue (with MaxInFlight set).
	MaxQueue int
	// MaxEntries bounds the (backend, model) pairs in one message (default
	// 4096); MaxPeers the other replicas remembered at once (default 256).
	MaxEntries int
	MaxPeers   int
	// MaxTenants bounds the queues (key and class) listed in one message,
	// over all its entries (default 4096); MaxWeight is the largest weight
	// believed (default 1000: a larger claim is cut to it).
	MaxTenants int
	MaxWeight  int
}

// LimitsFor derives the limits from a loaded config.
func LimitsFor(cfg *config.Config) Limits {
	l := Limits{MaxQueue: cfg.Routing.Queue.MaxLength, MaxInFlight: cfg.Routing.MaxConcurrency}
	for _, b := range cfg.Backends {
		l.Backends = append(l.Backends, b.Name)
		l.MaxInFlight = max(l.MaxInFlight, b.MaxConcurrency)
	}
	return l
}

// limits is Limits ready to check against.
type limits struct {
	Limits
	known  map[string]bool // nil: any backend
	maxTTL time.Duration
}

func newLimits(l Limits, heartbeat time.Duration) limits {
	if l.MaxEntries == 0 {
		l.MaxEntries = 4096
	}
	if l.MaxPeers == 0 {
		l.MaxPeers = 256
	}
	if l.MaxTenants == 0 {
		l.MaxTenants = 4096
	}
	if l.MaxWeight == 0 {
		l.MaxWeight = 1000
	}
	out := limits{Limits: l, maxTTL: maxTTLBeats * heartbeat}
	if len(l.Backends) > 0 {
		out.known = make(map[string]bool, len(l.Backends))
		for _, b := range l.Backends {
			out.known[b] = true
		}
	}
	return out
}

// maxTTLBeats is the longest TTL a peer may ask for, in this replica's
// heartbeats: a replica asks for 3, so 5 leaves room for a peer configured
// a little differently, while a stopped or forged peer is forgotten within
// 5 seconds at the default heartbeat.
const maxTTLBeats = 5

// check reports why msg cannot be believed, or nil. Entries for backends
// this replica does not know are not an error (a peer may run a newer
// config); they are dropped from msg.Counts and counted in unknown.
func (l *limits) check(msg *countMsg) (unknown int, err error) {
	if msg.Replica == "" {
		return 0, fmt.Errorf("no replica name")
	}
	if msg.TTLms < 0 || time.Duration(msg.TTLms)*time.Millisecond > l.maxTTL {
		return 0, fmt.Errorf("ttl_ms %d outside 0..%d (%d heartbeats)", msg.TTLms, l.maxTTL.Milliseconds(), maxTTLBeats)
	}
	if len(msg.Counts) > l.MaxEntries {
		return 0, fmt.Errorf("%d entries, more than %d", len(msg.Counts), l.MaxEntries)
	}
	seen := make(map[routing.Key]bool, len(msg.Counts))
	kept := msg.Counts[:0:0]
	tenants := 0
	for _, c := range msg.Counts {
		k := routing.Key{Backend: c.Backend, Model: c.Model}
		switch {
		case seen[k]:
			return 0, fmt.Errorf("backend %q model %q listed twice", c.Backend, c.Model)
		case c.N < 0 || c.D < 0:
			return 0, fmt.Errorf("negative count on backend %q", c.Backend)
		case l.MaxInFlight > 0 && c.N > l.MaxInFlight:
			return 0, fmt.Errorf("%d in flight on backend %q, above the largest cap %d", c.N, c.Backend, l.MaxInFlight)
		}
		seen[k] = true
		if tenants += len(c.T); tenants > l.MaxTenants {
			return 0, fmt.Errorf("more than %d queues listed", l.MaxTenants)
		}
		if err := l.checkTenants(&c); err != nil {
			return 0, fmt.Errorf("backend %q model %q: %w", c.Backend, c.Model, err)
		}
		if l.MaxInFlight > 0 {
			// Demand only ever counts up to a replica's share of a cap
			// (Reserved), so a peer with a longer queue than this one's is
			// not an error; its demand is cut to what could matter.
			c.D = min(c.D, l.MaxInFlight+l.MaxQueue)
		}
		if l.known != nil && !l.known[c.Backend] {
			unknown++
			continue
		}
		kept = append(kept, c)
	}
	msg.Counts = kept
	return unknown, nil
}

// checkTenants checks a count's queues: each (key, class) once, a key id
// as keys are named, a known class, counts that fit the pool's; weights
// beyond MaxWeight and waiting beyond MaxQueue are cut, not rejected.
func (l *limits) checkTenants(c *count) error {
	seen := make(map[[2]string]bool, len(c.T))
	n := 0
	for i := range c.T {
		t := &c.T[i]
		id := [2]string{t.Key, t.Class}
		switch {
		case seen[id]:
			return fmt.Errorf("queue %q/%q listed twice", t.Key, t.Class)
		case t.Key == "" || len(t.Key) > 64:
			return fmt.Errorf("queue key id of %d bytes, want 1 to 64", len(t.Key))
		case apikey.ValidClass(t.Class) != nil:
			return fmt.Errorf("queue %q: unknown class %q", t.Key, t.Class)
		case t.N < 0 || t.Q < 0 || t.Weight < 0:
			return fmt.Errorf("queue %q: negative count or weight", t.Key)
		case math.IsNaN(t.Recent) || math.IsInf(t.Recent, 0) || t.Recent < 0:
			return fmt.Errorf("queue %q: recent grants %v", t.Key, t.Recent)
		case t.Oldest < 0 || (t.Oldest > 0 && t.Q == 0):
			return fmt.Errorf("queue %q: oldest waiter at %d with %d waiting", t.Key, t.Oldest, t.Q)
		}
		seen[id] = true
		t.Weight = min(max(t.Weight, 1), l.MaxWeight)
		if l.MaxQueue > 0 {
			t.Q = min(t.Q, l.MaxQueue)
		}
		// Recent grants decay within seconds; more than a cap's worth
		// per millisecond of the half-life cannot be real.
		t.Recent = min(t.Recent, float64(max(l.MaxInFlight, 1))*float64(routing.RecentHalfLife.Milliseconds()))
		n += t.N
	}
	if n > c.N {
		return fmt.Errorf("queues hold %d in flight, the pool %d", n, c.N)
	}
	return nil
}

// backends keeps the known names of an invalidation; an empty list (every
// backend) stays empty. ok is false when names were given and none is
// known.
func (l *limits) backends(names []string) (known []string, ok bool) {
	if len(names) == 0 || l.known == nil {
		return names, true
	}
	for _, b := range names {
		if l.known[b] {
			known = append(known, b)
		}
	}
	return known, len(known) > 0
}

// rateLog logs the first problem at once and then at most one per every,
// saying how many it left out, so that a flood of bad messages cannot
// flood the log.
type rateLog struct {
	log   *slog.Logger
	every time.Duration

	mu      sync.Mutex // guards last and skipped
	last    time.Time
	skipped int
}

func (r *rateLog) warn(msg string, args ...any) {
	now := time.Now()
	r.mu.Lock()
	if !r.last.IsZero() && now.Sub(r.last) < r.every {
		r.skipped++
		r.mu.Unlock()
		return
	}
	r.last = now
	skipped := r.skipped
	r.skipped = 0
	r.mu.Unlock()
	if skipped > 0 {
		args = append(args, "similar_not_logged", skipped)
	}
	r.log.Warn(msg, args...)
}
