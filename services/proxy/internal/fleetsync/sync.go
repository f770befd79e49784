// Package fleetsync makes proxy replicas behave as one router over core NATS:
// each replica publishes its in-flight counts per (backend, model) when they
// change (coalesced) and as a heartbeat, routes on its own exact counts plus
// the others' latest, forgets a replica whose heartbeat expires, and fans
// cache invalidations out to every replica.
//
// Subjects and payloads (JSON):
//
//	drover.inflight          {"replica","seq","ttl_ms","counts":[{"backend","model","n","d","t":[{"k","c","w","n","q","r","o"}]}]}
//
// n is in flight, d is demand (in flight plus requests waiting that could
// use that backend and model); t splits them per queue: key id k, class c,
// weight w, in flight n, waiting q, recent grants r, the oldest waiter's
// arrival o (Unix ms, absent when none waits) (routing.TenantLoad),
// so that every replica plans the fleet's free slots alike (classes first,
// then weights: docs/limits.md, the queue).
//
//	drover.cache.invalidate  {"replica","backends":[...]}   (empty list: everything)
//
// A replica that says goodbye publishes empty counts. What other replicas
// send is believed only within Limits (counts no replica could hold, TTLs
// beyond a few heartbeats, unknown backends and floods are rejected and
// logged), and their invalidations are applied at most once per backend
// per InvalidateEvery, so one bad replica cannot stall the fleet or keep
// its backends busy answering refreshes. Core NATS may drop
// messages: counts are re-sent every heartbeat, a replica clears its caches
// when it reconnects, and cached entries keep their TTLs as a backstop.
// Without NATS every replica routes on its own counts and says so in
// Status.
package fleetsync

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/droverhq/drover/pkg/config"
	"github.com/droverhq/drover/services/proxy/internal/routing"
)

// Options tune the sync.
type Options struct {
	Replica string
	// MinInterval spaces change messages (default 2ms): a change is
	// published at once unless the previous message left less than
	// MinInterval ago, and changes in between merge into one message. A
	// busy replica thus sends at most 1/MinInterval messages a second, not
	// two per request. Heartbeat re-sends counts (default 1s); a peer is
	// forgotten after TTL without a message (default 3 heartbeats).
	MinInterval time.Duration
	Heartbeat   time.Duration
	TTL         time.Duration
	// Limits bound what other replicas may claim (LimitsFor(cfg)).
	Limits Limits
	// InvalidateEvery is how often at most one backend's cached lists are
	// dropped on other replicas' word (default 1s): invalidations arriving
	// faster are merged into one at the end of the interval.
	InvalidateEvery time.Duration
	// Registerer, if set, gets the counters of rejected messages and
	// merged invalidations (drover_fleet_messages_rejected_total,
	// drover_fleet_invalidations_coalesced_total) until Close.
	Registerer prometheus.Registerer
}

// Local is what the sync needs from this replica.
type Local interface {
	Loads() map[routing.Key]routing.Load
	Recheck()
}

// Invalidator drops cached model lists locally.
type Invalidator func(backends ...string)

type countMsg struct {
	Replica string  `json:"replica"`
	Seq     uint64  `json:"seq"`
	TTLms   int64   `json:"ttl_ms"`
	Counts  []count `json:"counts"`
}

type count struct {
	Backend string        `json:"backend"`
	Model   string        `json:"model"`
	N       int           `json:"n"` // in flight
	D       int           `json:"d"` // demand: in flight plus waiting
	T       []tenantCount `json:"t,omitempty"`
}

// tenantCount is one queue (key and class) of a count.
type tenantCount struct {
	Key    string  `json:"k"`
	Class  string  `json:"c"`
	Weight int     `json:"w"`
	N      int     `json:"n"`           // in flight
	Q      int     `json:"q"`           // waiting
	Recent float64 `json:"r"`           // recent grants (routing.TenantLoad.Recent)
	Oldest int64   `json:"o,omitempty"` // the oldest waiter's arrival, Unix ms (routing.TenantLoad.Oldest)
}

type invalidateMsg struct {
	Replica  string   `json:"replica"`
	Backends []string `json:"backends"`
}

// snapshot is the sum of every live peer's counts; it is replaced whole
// (copy-on-write) so the router reads it without a lock.
type snapshot struct {
	byKey     map[routing.Key]int
	byBackend map[string]int
	peers     map[routing.Key][]routing.PeerLoad
	replicas  int // live replicas, this one included
	rank      int // this replica's place among them, by name
}

type peer struct {
	seq     uint64
	counts  []count
	expires time.Time
}

// Sync is one replica's side. Create it with New, give it the router with
// Attach, then Start; Close stops it.
type Sync struct {
	opts       Options
	nc         *nats.Conn
	log        *slog.Logger
	local      Local
	invalidate Invalidator

	remote  atomic.Pointer[snapshot]
	changed chan struct{} // buffered 1: a change is waiting to be published
	seq     atomic.Uint64
	online  atomic.Bool

	lim     limits
	coal    *coalescer
	held    chan struct{} // buffered 1: the coalescer holds invalidations back
	bad     *rateLog      // rejected messages
	unknown *rateLog      // counts for backends this replica does not know

	mu    sync.Mutex // guards peers
	peers map[string]*peer

	subs     []*nats.Subscription
	cancel   context.CancelFunc
	wg       sync.WaitGroup
	counters []prometheus.Collector // registered with opts.Registerer

	// Counters for metrics and tests. Rejected counts messages from other
	// replicas that broke the limits (or did not decode); Coalesced counts
	// invalidations merged into a later one.
	Published, Received, Dropped, Rejected, Coalesced atomic.Int64
}

// New prepares a sync over nc (which may be nil: local counts only). The
// sync sets nc's disconnect and reconnect handlers, so give it a connection
// of its own.
func New(nc *nats.Conn, opts Options, log *slog.Logger) *Sync {
	if opts.Heartbeat == 0 {
		opts.Heartbeat = time.Second
	}
	if opts.TTL == 0 {
		opts.TTL = 3 * opts.Heartbeat
	}
	if opts.MinInterval == 0 {
		opts.MinInterval = 2 * time.Millisecond
	}
	if opts.InvalidateEvery == 0 {
		opts.InvalidateEvery = time.Second
	}
	s := &Sync{opts: opts, nc: nc, log: log, changed: make(chan struct{}, 1), peers: map[string]*peer{},
		lim: newLimits(opts.Limits, opts.Heartbeat), held: make(chan struct{}, 1),
		bad: &rateLog{log: log, every: 10 * time.Second}, unknown: &rateLog{log: log, every: time.Minute}}
	s.coal = newCoalescer(opts.InvalidateEvery, func(backends ...string) {
		if s.invalidate != nil {
			s.invalidate(backends...)
		}
	})
	s.counters = []prometheus.Collector{
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "drover_fleet_messages_rejected_total",
			Help: "Fleet-state messages from other replicas rejected: beyond the limits (counts above any cap, TTLs beyond 5 heartbeats, floods) or undecodable."},
			func() float64 { return float64(s.Rejected.Load()) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "drover_fleet_invalidations_coalesced_total",
			Help: "Cache invalidations from other replicas merged into a later one (at most one per backend per interval is applied)."},
			func() float64 { return float64(s.Coalesced.Load()) }),
	}
	if opts.Registerer != nil {
		for i, c := range s.counters {
			if err := opts.Registerer.Register(c); err != nil {
				log.Warn("fleet sync metrics not registered", "err", err)
				s.counters = s.counters[:i]
				break
			}
		}
	}
	s.remote.Store(&snapshot{byKey: map[routing.Key]int{}, byBackend: map[string]int{}, peers: map[routing.Key][]routing.PeerLoad{}, replicas: 1})
	return s
}

// InFlight is the other replicas' count for k (routing.Remote).
func (s *Sync) InFlight(k routing.Key) int { return s.remote.Load().byKey[k] }

// BackendInFlight is the other replicas' count on a backend (routing.Remote).
func (s *Sync) BackendInFlight(b string) int { return s.remote.Load().byBackend[b] }

// Share divides cap evenly among the live replicas, so that shares sum to
// cap (routing.Remote); the remainder goes to the replicas from an offset
// that depends on the backend and model, so that where caps do not divide
// evenly (cap 2 over three replicas) each replica has a share of some
// backend rather than the first by name of every one. A replica alone has
// it all.
func (s *Sync) Share(k routing.Key, cap int) int {
	snap := s.remote.Load()
	return share(k, cap, snap.replicas, snap.rank)
}

// ShareOf is the share of k's cap of the replica ranked rank
// (routing.Remote).
func (s *Sync) ShareOf(k routing.Key, rank, cap int) int {
	return share(k, cap, s.remote.Load().replicas, rank)
}

// Changed signals that local counts changed; it never blocks (it is called
// under the router's lock).
func (s *Sync) Changed() {
	select {
	case s.changed <- struct{}{}:
	default:
	}
}

// Attach gives the sync this replica's router and cache invalidation.
func (s *Sync) Attach(local Local, inv Invalidator) {
	s.local, s.invalidate = local, inv
}

// Start subscribes and starts publishing. With no connection it does
// nothing: the replica routes on its own counts.
func (s *Sync) Start() error {
	if s.nc == nil {
		return nil
	}
	ctx, cancel := context.WithCancel(context.Background())
	s.cancel = cancel
	for subj, h := range map[string]nats.MsgHandler{config.SubjectInFlight: s.onCounts, config.SubjectInvalidate: s.onInvalidate} {
		sub, err := s.nc.Subscribe(subj, h)
		if err != nil {
			cancel()
			return err
		}
		s.subs = append(s.subs, sub)
	}
	s.online.Store(s.nc.IsConnected())
	s.nc.SetDisconnectErrHandler(func(_ *nats.Conn, err error) {
		s.online.Store(false)
		s.forgetPeers()
		s.log.Warn("fleet sync lost NATS: routing on this replica's counts only", "err", err)
	})
	s.nc.SetReconnectHandler(func(*nats.Conn) {
		s.online.Store(true)
		// Invalidations may have been missed while away.
		if s.invalidate != nil {
			s.invalidate()
		}
		s.Changed()
		s.log.Info("fleet sync reconnected to NATS; caches cleared")
	})
	s.wg.Add(1)
	go s.loop(ctx)
	s.Changed() // say hello at once, so peers count this replica in their shares
	return nil
}

// Close says goodbye (peers forget this replica at once) and stops.
func (s *Sync) Close() {
	if s.opts.Registerer != nil {
		for _, c := range s.counters {
			s.opts.Registerer.Unregister(c)
		}
		s.counters = nil
	}
	if s.cancel == nil {
		return
	}
	s.cancel()
	s.wg.Wait()
	for _, sub := range s.subs {
		sub.Unsubscribe() //nolint:errcheck // closing anyway
	}
	s.publishCounts(nil)
	s.nc.Flush() //nolint:errcheck // best effort goodbye
}

func (s *Sync) loop(ctx context.Context) {
	defer s.wg.Done()
	beat := time.NewTicker(s.opts.Heartbeat)
	defer beat.Stop()
	expire := time.NewTicker(s.opts.TTL / 3)
	defer expire.Stop()
	flush := time.NewTimer(time.Hour)
	flush.Stop()
	defer flush.Stop()
	flushHeld := func() {
		if next := s.coal.flush(time.Now()); next > 0 {
			flush.Reset(next)
		}
	}
	var last time.Time
	for {
		select {
		case <-ctx.Done():
			return
		case <-s.held:
			flushHeld()
		case <-flush.C:
			flushHeld()
		case <-s.changed:
			if wait := s.opts.MinInterval - time.Since(last); wait > 0 {
				t := time.NewTimer(wait)
				select {
				case <-ctx.Done():
					t.Stop()
					return
				case <-t.C:
				}
			}
			s.publishLocal()
			last = time.Now()
		case <-beat.C:
			s.publishLocal()
			last = time.Now()
		case <-expire.C:
			s.expirePeers()
		}
	}
}

func (s *Sync) publishLocal() {
	var counts []count
	budget := s.lim.MaxTenants
	for k, l := range s.local.Loads() {
		c := count{Backend: k.Backend, Model: k.Model, N: l.InFlight, D: l.Demand}
		c.T, budget = tenantCounts(l.Tenants, budget)
		counts = append(counts, c)
	}
	s.publishCounts(counts)
}

// tenantCounts lists a pool's queues, the busiest first, up to budget
// queues per message (the peers' limit); the rest count, on the other
// side, as one unnamed queue of the pool's totals.
func tenantCounts(ts []routing.TenantLoad, budget int) ([]tenantCount, int) {
	if len(ts) > budget {
		ts = slices.Clone(ts)
		slices.SortFunc(ts, func(a, b routing.TenantLoad) int { return (b.InFlight + b.Waiting) - (a.InFlight + a.Waiting) })
		ts = ts[:budget]
	}
	out := make([]tenantCount, 0, len(ts))
	for _, t := range ts {
		out = append(out, tenantCount{Key: t.ID, Class: t.Class, Weight: t.Weight, N: t.InFlight, Q: t.Waiting, Recent: t.Recent, Oldest: t.Oldest})
	}
	return out, budget - len(out)
}

func (s *Sync) publishCounts(counts []count) {
	msg, _ := json.Marshal(countMsg{Replica: s.opts.Replica, Seq: s.seq.Add(1), TTLms: s.opts.TTL.Milliseconds(), Counts: counts})
	if err := s.nc.Publish(config.SubjectInFlight, msg); err != nil {
		s.Dropped.Add(1)
		return
	}
	s.Published.Add(1)
}

// PublishInvalidate tells every other replica to drop cached entries.
func (s *Sync) PublishInvalidate(backends []string) {
	if s.nc == nil {
		return
	}
	msg, _ := json.Marshal(invalidateMsg{Replica: s.opts.Replica, Backends: backends})
	if err := s.nc.Publish(config.SubjectInvalidate, msg); err != nil {
		s.Dropped.Add(1)
		s.log.Warn("could not publish cache invalidation", "err", err)
	}
}

// onInvalidate drops cached lists on another replica's word, for backends
// this replica knows, at most once per backend per InvalidateEvery.
func (s *Sync) onInvalidate(m *nats.Msg) {
	var msg invalidateMsg
	if err := json.Unmarshal(m.Data, &msg); err != nil {
		s.reject("", "undecodable cache invalidation: "+err.Error())
		return
	}
	if msg.Replica == s.opts.Replica {
		return
	}
	if len(msg.Backends) > s.lim.MaxEntries {
		s.reject(msg.Replica, fmt.Sprintf("cache invalidation names %d backends, more than %d", len(msg.Backends), s.lim.MaxEntries))
		return
	}
	keys, ok := s.lim.backends(msg.Backends)
	if !ok {
		s.reject(msg.Replica, "cache invalidation names no backend this replica knows")
		return
	}
	if len(keys) == 0 {
		keys = s.lim.Backends
		if len(keys) == 0 {
			keys = []string{allBackends}
		}
	}
	if held := s.coal.offer(time.Now(), keys); held > 0 {
		s.Coalesced.Add(int64(held))
		select {
		case s.held <- struct{}{}:
		default:
		}
	}
}

// onCounts takes another replica's counts if they are within the limits.
func (s *Sync) onCounts(m *nats.Msg) {
	var msg countMsg
	if err := json.Unmarshal(m.Data, &msg); err != nil {
		s.reject("", "undecodable in-flight counts: "+err.Error())
		return
	}
	if msg.Replica == s.opts.Replica {
		return
	}
	unknown, err := s.lim.check(&msg)
	if err != nil {
		s.reject(msg.Replica, err.Error())
		return
	}
	if unknown > 0 {
		s.unknown.warn("in-flight counts for backends this replica does not route to were left out (is the other replica's config newer?)",
			"replica", msg.Replica, "entries", unknown)
	}
	s.Received.Add(1)
	ttl := time.Duration(msg.TTLms) * time.Millisecond
	if ttl <= 0 {
		ttl = s.opts.TTL
	}
	s.mu.Lock()
	p := s.peers[msg.Replica]
	if p == nil && len(s.peers) >= s.lim.MaxPeers {
		s.mu.Unlock()
		s.reject(msg.Replica, fmt.Sprintf("already %d other replicas, the most remembered", s.lim.MaxPeers))
		return
	}
	if p != nil && msg.Seq <= p.seq && msg.Seq != 1 {
		s.mu.Unlock()
		return // out of order; a restarted replica starts again at 1
	}
	s.peers[msg.Replica] = &peer{seq: msg.Seq, counts: msg.Counts, expires: time.Now().Add(ttl)}
	s.rebuildLocked()
	s.mu.Unlock()
	// Remote slots may have freed: let local waiters have them.
	if s.local != nil {
		s.local.Recheck()
	}
}

// reject counts and logs (rate-limited) a message that is not believed.
func (s *Sync) reject(replica, reason string) {
	s.Rejected.Add(1)
	s.bad.warn("fleet-state message from another replica rejected", "replica", replica, "reason", reason)
}

func (s *Sync) expirePeers() {
	now := time.Now()
	s.mu.Lock()
	dropped := false
	for name, p := range s.peers {
		if now.After(p.expires) {
			delete(s.peers, name)
			dropped = true
			s.log.Info("forgot replica: heartbeat expired", "replica", name)
		}
	}
	if dropped {
		s.rebuildLocked()
	}
	s.mu.Unlock()
	if dropped && s.local != nil {
		s.local.Recheck()
	}
}

func (s *Sync) forgetPeers() {
	s.mu.Lock()
	s.peers = map[string]*peer{}
	s.rebuildLocked()
	s.mu.Unlock()
}

func (s *Sync) rebuildLocked() {
	snap := &snapshot{byKey: map[routing.Key]int{}, byBackend: map[string]int{}, peers: map[routing.Key][]routing.PeerLoad{}, replicas: len(s.peers) + 1}
	names := make([]string, 0, len(s.peers)+1)
	names = append(names, s.opts.Replica)
	for name := range s.peers {
		names = append(names, name)
	}
	sort.Strings(names)
	for rank, name := range names {
		if name == s.opts.Replica {
			snap.rank = rank
			continue
		}
		for _, c := range s.peers[name].counts {
			k := routing.Key{Backend: c.Backend, Model: c.Model}
			snap.byKey[k] += c.N
			snap.byBackend[c.Backend] += c.N
			p := routing.PeerLoad{Rank: rank, InFlight: c.N, Demand: c.D, Tenants: make([]routing.TenantLoad, 0, len(c.T))}
			for _, t := range c.T {
				p.Tenants = append(p.Tenants, routing.TenantLoad{ID: t.Key, Class: t.Class, Weight: t.Weight, InFlight: t.N, Waiting: t.Q, Recent: t.Recent, Oldest: t.Oldest})
			}
			snap.peers[k] = append(snap.peers[k], p)
		}
	}
	s.remote.Store(snap)
}

// Peers is the other replicas' latest loads on k, per queue
// (routing.Remote). The slice is shared: callers must not change it.
func (s *Sync) Peers(k routing.Key) []routing.PeerLoad { return s.remote.Load().peers[k] }

// Rank is this replica's place among the live replicas, by name
// (routing.Remote).
func (s *Sync) Rank() int { return s.remote.Load().rank }

func share(k routing.Key, cap, replicas, rank int) int {
	n := cap / replicas
	if (rank+shareOffset(k, replicas))%replicas < cap%replicas {
		n++
	}
	return n
}

// shareOffset is where k's remainder starts among the ranks: an FNV-1a hash
// of the backend and model, the same on every replica.
func shareOffset(k routing.Key, replicas int) int {
	if replicas <= 1 {
		return 0
	}
	h := uint32(2166136261)
	for _, s := range [...]string{k.Backend, "\x00", k.Model} {
		for i := 0; i < len(s); i++ {
			h = (h ^ uint32(s[i])) * 16777619
		}
	}
	return int(h % uint32(replicas))
}

// Status is reported by /health.
type Status struct {
	Mode   string   `json:"mode"` // "fleet" or "local"
	Peers  []string `json:"peers"`
	Reason string   `json:"reason,omitempty"`
}

// Status says whether counts are shared and with whom.
func (s *Sync) Status() Status {
	if s.nc == nil {
		return Status{Mode: "local", Reason: "nats.url is not set", Peers: []string{}}
	}
	if !s.online.Load() {
		return Status{Mode: "local", Reason: "NATS unreachable", Peers: []string{}}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	peers := []string{}
	for name := range s.peers {
		peers = append(peers, name)
	}
	return Status{Mode: "fleet", Peers: peers}
}

// Remote returns the other replicas' latest in-flight counts per backend
// and model (for fleet-wide views such as /api/usage).
func (s *Sync) Remote() map[string]map[string]int {
	snap := s.remote.Load()
	out := map[string]map[string]int{}
	for k, n := range snap.byKey {
		if out[k.Backend] == nil {
			out[k.Backend] = map[string]int{}
		}
		out[k.Backend][k.Model] = n
	}
	return out
}
