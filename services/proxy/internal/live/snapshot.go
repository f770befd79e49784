package live

import (
	"slices"
	"time"

	"github.com/droverhq/drover/pkg/usage"
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
type Snapshot struct {
	// UsageCounts is in-flight requests per endpoint and model across the
	// fleet: this replica's exact counts plus the other replicas' latest.
	UsageCounts map[string]map[string]int `json:"usage_counts"`
	// TokenUsageCounts is total tokens (input + output) per endpoint and
	// model.
	TokenUsageCounts map[string]map[string]int64 `json:"token_usage_counts"`
	// Totals is the fuller count behind TokenUsageCounts.
	Totals map[string]map[string]usage.Count `json:"totals"`
	// Keys is the totals per client key id (across endpoints and models).
	Keys map[string]usage.Count `json:"key_totals"`
	// LocalUsageCounts is this replica's share of UsageCounts.
	LocalUsageCounts map[string]map[string]int `json:"local_usage_counts"`
	// InFlight is the sum of UsageCounts.
	InFlight int `json:"in_flight"`
	// QueueLength is requests waiting for a slot on this replica.
	QueueLength int `json:"queue_length"`
	// Replica names the replica that answered; Fleet is its sync state
	// (mode "fleet" with its peers, or "local" and why).
	Replica string           `json:"replica"`
	Fleet   fleetsync.Status `json:"fleet"`
	// Tokens says where the token totals come from.
	Tokens TokenSource `json:"token_source"`
	// Time is when the snapshot was taken; Seq numbers the snapshots this
	// replica published (0 for one built on request).
	Time time.Time `json:"time"`
	Seq  uint64    `json:"seq"`
}

// TokenSource says where token totals come from and, when they are only
// this replica's, why.
type TokenSource struct {
	Mode   string `json:"mode"` // ModeFleet or ModeLocal
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
	return a.InFlight == b.InFlight && a.QueueLength == b.QueueLength && a.Replica == b.Replica &&
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

// Snapshot builds the current view (Seq 0).
func (l *Live) Snapshot() *Snapshot {
	local := l.opts.Local()
	var remote map[string]map[string]int
	if l.opts.Remote != nil {
		remote = l.opts.Remote()
	}
	s := &Snapshot{
		UsageCounts:      merge(local, remote),
		LocalUsageCounts: merge(local, nil),
		TokenUsageCounts: map[string]map[string]int64{},
		Totals:           map[string]map[string]usage.Count{},
		Keys:             map[string]usage.Count{},
		Replica:          l.opts.Replica,
		Time:             time.Now().UTC(),
	}
	for _, models := range s.UsageCounts {
		for _, n := range models {
			s.InFlight += n
		}
	}
	if l.opts.QueueLen != nil {
		s.QueueLength = l.opts.QueueLen()
	}
	if l.opts.Fleet != nil {
		s.Fleet = l.opts.Fleet()
	} else {
		s.Fleet = fleetsync.Status{Mode: "local", Peers: []string{}}
	}
	if l.fleet != nil {
		counts, src, ok := l.fleet.view()
		s.Tokens = src
		if ok {
			for k, c := range counts {
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
	} else {
		s.Tokens = TokenSource{Mode: ModeLocal, Reason: l.local}
	}
	if l.opts.Totals != nil {
		s.Totals = l.opts.Totals.Snapshot()
	}
	l.keysMu.Lock()
	for k, c := range l.keys {
		s.Keys[k] = *c
	}
	l.keysMu.Unlock()
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
