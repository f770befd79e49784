package metrics

import (
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
)

// Affinity counts cache-affine routing's decisions and its sharing
// between replicas, for Prometheus and for /health's summary (the
// dashboard's hit rate).
type Affinity struct {
	picks       *prometheus.CounterVec
	promptBytes *prometheus.CounterVec
	shareMsgs   *prometheus.CounterVec
	shareBytes  *prometheus.CounterVec
	slotted     *prometheus.CounterVec

	hits, misses, overrides atomic.Int64
	prompt, cached          atomic.Int64
	sent, sentBytes         atomic.Int64
	received, dropped       atomic.Int64
}

// AffinityStatus is the summary in /health.
type AffinityStatus struct {
	Strategy  string `json:"strategy"`
	Hits      int64  `json:"hits"`
	Misses    int64  `json:"misses"`
	Overrides int64  `json:"overrides"`
	// HitRate is hits over ranked requests; CachedRate the share of
	// prompt bytes the chosen backends held.
	HitRate      float64 `json:"hit_rate"`
	CachedRate   float64 `json:"cached_rate"`
	IndexEntries int     `json:"index_entries"`
	Sent         int64   `json:"share_messages_sent"`
	SentBytes    int64   `json:"share_bytes_sent"`
	Received     int64   `json:"share_messages_received"`
	Dropped      int64   `json:"share_hashes_dropped"`
}

// NewAffinity registers the affinity collectors on m's registry; size
// reads the index's entries at scrape time.
func (m *Metrics) NewAffinity(size func() int) *Affinity {
	a := &Affinity{
		picks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "drover_affinity_picks_total",
			Help: "Requests ranked by cache affinity, by outcome: hit (sent to the strongest holder of its prefix or session), miss (cached nowhere), override (a stronger holder was beyond the load bound).",
		}, []string{"outcome"}),
		promptBytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "drover_affinity_prompt_bytes_total",
			Help: "Canonical prompt bytes of ranked requests, by whether the chosen backend held them (cached true or false).",
		}, []string{"cached"}),
		shareMsgs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "drover_affinity_share_messages_total",
			Help: "Messages on drover.affinity, by direction (sent, received, rejected); dropped counts hashes not sent because the queue was full.",
		}, []string{"direction"}),
		shareBytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "drover_affinity_share_bytes_total",
			Help: "Bytes of messages on drover.affinity, by direction.",
		}, []string{"direction"}),
		slotted: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "drover_affinity_slotted_total",
			Help: "Requests ranked with the slot model (one replica), by what the modelled slots held for them when granted: hit (a free slot of the chosen backend), elsewhere (another backend's free slot), busy (only busy slots), evicted (none; its group was asked before), new (none; a new group); wait: none, queue (for a slot in the fair queue) or warm (for the busy slot holding its prefix).",
		}, []string{"reason", "wait"}),
	}
	m.Registry.MustRegister(a.picks, a.promptBytes, a.shareMsgs, a.shareBytes, a.slotted,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "drover_affinity_index_entries", Help: "Block hashes and sessions held in the affinity index."},
			func() float64 { return float64(size()) }))
	return a
}

// Pick records one ranked request.
func (a *Affinity) Pick(outcome string, promptBytes, cachedBytes int) {
	a.picks.WithLabelValues(outcome).Inc()
	switch outcome {
	case "hit":
		a.hits.Add(1)
	case "override":
		a.overrides.Add(1)
	default:
		a.misses.Add(1)
	}
	a.prompt.Add(int64(promptBytes))
	a.cached.Add(int64(cachedBytes))
	a.promptBytes.WithLabelValues("true").Add(float64(cachedBytes))
	a.promptBytes.WithLabelValues("false").Add(float64(promptBytes - cachedBytes))
}

// Slotted records what the slot model held for one granted request.
func (a *Affinity) Slotted(reason, wait string) {
	a.slotted.WithLabelValues(reason, wait).Inc()
}

// Share records messages (or dropped hashes) on drover.affinity.
func (a *Affinity) Share(direction string, n, bytes int) {
	a.shareMsgs.WithLabelValues(direction).Add(float64(n))
	if bytes > 0 {
		a.shareBytes.WithLabelValues(direction).Add(float64(bytes))
	}
	switch direction {
	case "sent":
		a.sent.Add(int64(n))
		a.sentBytes.Add(int64(bytes))
	case "received":
		a.received.Add(int64(n))
	case "dropped":
		a.dropped.Add(int64(n))
	}
}

// Status summarises the counts since start.
func (a *Affinity) Status(strategy string, entries int) AffinityStatus {
	s := AffinityStatus{Strategy: strategy, Hits: a.hits.Load(), Misses: a.misses.Load(), Overrides: a.overrides.Load(), IndexEntries: entries,
		Sent: a.sent.Load(), SentBytes: a.sentBytes.Load(), Received: a.received.Load(), Dropped: a.dropped.Load()}
	if n := s.Hits + s.Misses + s.Overrides; n > 0 {
		s.HitRate = float64(s.Hits) / float64(n)
	}
	if p := a.prompt.Load(); p > 0 {
		s.CachedRate = float64(a.cached.Load()) / float64(p)
	}
	return s
}
