package live

import (
	"slices"
	"strings"
	"time"

	"github.com/droverhq/drover/pkg/usage"
	"github.com/droverhq/drover/services/proxy/internal/auth"
	"github.com/droverhq/drover/services/proxy/internal/fleetsync"
)

// Token source modes.
const (
	// ModeFleet: totals are ClickHouse's plus the usage stream since.
	ModeFleet = "fleet"
	// ModeLocal: totals are this replica's own, since it started.
	ModeLocal = "local"
)

// Snapshot is the body of /api/usage and of every /api/usage-stream event.
// The first two fields keep the Python router's /api/usage shape.
//
// What a snapshot shows depends on who asks (Scope): an admin sees the
// fleet; a client key sees its own usage only. Its totals are its own
// rows, and the in-flight counts and the queue, which are every key's
// requests, are left empty (they would show other keys' activity), as is
// the stream sequence (a count of every key's events).
type Snapshot struct {
	// UsageCounts is in-flight requests per endpoint and model across the
	// fleet: this replica's exact counts plus the other replicas' latest.
	// Empty for a client key.
	UsageCounts map[string]map[string]int `json:"usage_counts"`
	// TokenUsageCounts is total tokens (input + output) per endpoint and
	// model.
	TokenUsageCounts map[string]map[string]int64 `json:"token_usage_counts"`
	// Totals is the fuller count behind TokenUsageCounts.
	Totals map[string]map[string]usage.Count `json:"totals"`
	// Keys is the totals per client key id (across endpoints and models);
	// for a client key, its own only.
	Keys map[string]usage.Count `json:"key_totals"`
	// LocalUsageCounts is this replica's share of UsageCounts.
	LocalUsageCounts map[string]map[string]int `json:"local_usage_counts"`
	// InFlight is the sum of UsageCounts.
	InFlight int `json:"in_flight"`
	// QueueLength is requests waiting for a slot on this replica (0 for a
	// client key).
	QueueLength int `json:"queue_length"`
	// Scope is ScopeAll (an admin: every key) or ScopeKey (a client key:
	// KeyID's usage only).
	Scope string `json:"scope"`
	KeyID string `json:"key_id,omitempty"`
	// Replica names the replica that answered; Fleet is its sync state
	// (mode "fleet" with its peers, or "local" and why).
	Replica string           `json:"replica"`
	Fleet   fleetsync.Status `json:"fleet"`
	// Tokens says where the token totals come from.
	Tokens TokenSource `json:"token_source"`
	// Time is when the snapshot was taken; Seq numbers the snapshots this
	// replica published to the same scope (0 for one built on request).
	Time time.Time `json:"time"`
	Seq  uint64    `json:"seq"`
}

// Snapshot scopes.
const (
	ScopeAll = "all"
	ScopeKey = "key"
)

// scope is who a snapshot is built for: every key, or one.
type scope struct {
	all bool
	key string // when !all
}

// scopeOf is what p may see: everything for an admin (and the open
// anonymous admin when no key exists), its own key otherwise.
func scopeOf(p auth.Principal) scope {
	if p.Admin() {
		return scope{all: true}
	}
	return scope{key: p.ID}
}

// TokenSource says where token totals come from and, when they are only
// this replica's, why.
type TokenSource struct {
	Mode string `json:"mode"` // ModeFleet or ModeLocal
	// Reason says why the totals are local or not current; a client key
	// sees its first clause only (no addresses or error text).
	Reason string `json:"reason,omitempty"`
	// ClickHouseAt is when the ClickHouse baseline was read; StreamSeq is
	// the last usage stream sequence counted since (fleet mode only).
	ClickHouseAt time.Time `json:"clickhouse_at,omitzero"`
	StreamSeq    uint64    `json:"stream_seq,omitempty"`
}

// sameContent reports whether two snapshots differ only in Time and Seq.
func sameContent(a, b *Snapshot) bool {
	if a == nil || b == nil {
		return false
	}
	return a.InFlight == b.InFlight && a.QueueLength == b.QueueLength && a.Replica == b.Replica && a.Scope == b.Scope && a.KeyID == b.KeyID &&
		a.Tokens == b.Tokens && equal2(a.UsageCounts, b.UsageCounts) && equal2(a.LocalUsageCounts, b.LocalUsageCounts) &&
		equal2(a.TokenUsageCounts, b.TokenUsageCounts) && equal2(a.Totals, b.Totals) && equal1(a.Keys, b.Keys) &&
		fleetEqual(a.Fleet, b.Fleet)
}

func equal1[V comparable](a, b map[string]V) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

func equal2[V comparable](a, b map[string]map[string]V) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		w, ok := b[k]
		if !ok || !equal1(v, w) {
			return false
		}
	}
	return true
}

// merge adds b's counts into a copy of a.
func merge(a, b map[string]map[string]int) map[string]map[string]int {
	out := make(map[string]map[string]int, len(a))
	for _, m := range []map[string]map[string]int{a, b} {
		for ep, models := range m {
			for model, n := range models {
				if n == 0 {
					continue
				}
				if out[ep] == nil {
					out[ep] = map[string]int{}
				}
				out[ep][model] += n
			}
		}
	}
	return out
}

// fleetEqual compares sync states, peers in any order.
func fleetEqual(a, b fleetsync.Status) bool {
	if a.Mode != b.Mode || a.Reason != b.Reason || len(a.Peers) != len(b.Peers) {
		return false
	}
	pa, pb := slices.Clone(a.Peers), slices.Clone(b.Peers)
	slices.Sort(pa)
	slices.Sort(pb)
	return slices.Equal(pa, pb)
}

// state is what snapshots are made of, read once for every scope.
type state struct {
	local, remote map[string]map[string]int
	queue         int
	fleet         fleetsync.Status
	counts        map[tokenKey]usage.Count // the fleet's or this replica's
	tokens        TokenSource
	at            time.Time
}

// state reads the current state: in-flight counts, the queue, fleet sync
// and the token totals (the fleet's when ready, else this replica's).
func (l *Live) state() state {
	st := state{local: l.opts.Local(), at: time.Now().UTC()}
	if l.opts.Remote != nil {
		st.remote = l.opts.Remote()
	}
	if l.opts.QueueLen != nil {
		st.queue = l.opts.QueueLen()
	}
	if l.opts.Fleet != nil {
		st.fleet = l.opts.Fleet()
	} else {
		st.fleet = fleetsync.Status{Mode: "local", Peers: []string{}}
	}
	if l.fleet != nil {
		counts, src, ok := l.fleet.view()
		st.tokens = src
		if ok {
			st.counts = counts
			return st
		}
	} else {
		st.tokens = TokenSource{Mode: ModeLocal, Reason: l.local}
	}
	l.localMu.Lock()
	st.counts = make(map[tokenKey]usage.Count, len(l.localCounts))
	for k, c := range l.localCounts {
		st.counts[k] = *c
	}
	l.localMu.Unlock()
	return st
}

// Snapshot builds the current view of everything (an admin's; Seq 0).
func (l *Live) Snapshot() *Snapshot { return l.state().snapshot(scope{all: true}, l.opts.Replica) }

// SnapshotFor builds the current view of what p may see (Seq 0).
func (l *Live) SnapshotFor(p auth.Principal) *Snapshot {
	return l.state().snapshot(scopeOf(p), l.opts.Replica)
}

// snapshot is st as sc may see it.
func (st state) snapshot(sc scope, replica string) *Snapshot {
	s := &Snapshot{
		UsageCounts:      map[string]map[string]int{},
		LocalUsageCounts: map[string]map[string]int{},
		TokenUsageCounts: map[string]map[string]int64{},
		Totals:           map[string]map[string]usage.Count{},
		Keys:             map[string]usage.Count{},
		Scope:            ScopeAll,
		Replica:          replica,
		Fleet:            st.fleet,
		Tokens:           st.tokens,
		Time:             st.at,
	}
	if sc.all {
		s.UsageCounts = merge(st.local, st.remote)
		s.LocalUsageCounts = merge(st.local, nil)
		for _, models := range s.UsageCounts {
			for _, n := range models {
				s.InFlight += n
			}
		}
		s.QueueLength = st.queue
	} else {
		s.Scope, s.KeyID = ScopeKey, sc.key
		s.Tokens.Reason, _, _ = strings.Cut(s.Tokens.Reason, ": ")
		s.Tokens.StreamSeq = 0
		s.Fleet.Reason, _, _ = strings.Cut(s.Fleet.Reason, ": ")
	}
	for k, c := range st.counts {
		if !sc.all && k.APIKey != sc.key {
			continue
		}
		s.Keys[k.APIKey] = sum(s.Keys[k.APIKey], c)
		if k.Endpoint == "" {
			continue // never reached a backend
		}
		if s.Totals[k.Endpoint] == nil {
			s.Totals[k.Endpoint] = map[string]usage.Count{}
		}
		s.Totals[k.Endpoint][k.Model] = sum(s.Totals[k.Endpoint][k.Model], c)
	}
	s.fillTokens()
	return s
}

func (s *Snapshot) fillTokens() {
	for ep, models := range s.Totals {
		s.TokenUsageCounts[ep] = make(map[string]int64, len(models))
		for m, c := range models {
			s.TokenUsageCounts[ep][m] = c.InputTokens + c.OutputTokens
		}
	}
}

func sum(a, b usage.Count) usage.Count {
	a.Add(b)
	return a
}
