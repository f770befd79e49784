package server

import (
	"cmp"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/droverhq/drover/pkg/config"
	"github.com/droverhq/drover/services/proxy/internal/affinity"
	"github.com/droverhq/drover/services/proxy/internal/metrics"
	"github.com/droverhq/drover/services/proxy/internal/routing"
)

// affinityParts are cache-affine routing's pieces on one replica
// (routing.strategy, routing.affinity; docs/routing.md).
type affinityParts struct {
	strategy routing.Strategy
	index    *affinity.Index
	metrics  *metrics.Affinity
	sharer   *affinity.Sharer // nil: not shared
	// router, once attached, gives the sharer this replica's token loads.
	router atomic.Pointer[routing.Router]
}

// newAffinity builds the index, its metrics and, with a NATS connection
// and routing.affinity.share, its sharing; the router options it returns
// are nil for strategies that need no index.
func newAffinity(cfg *config.Config, m *metrics.Metrics, conn *nats.Conn, log *slog.Logger) (*affinityParts, *routing.Affinity) {
	strategy, err := routing.ParseStrategy(cfg.Routing.Strategy)
	if err != nil {
		// Validate refuses it first; a Config built around it gets today's
		// order, loudly.
		log.Error("routing.strategy: "+err.Error(), "using", "least_loaded")
	}
	p := &affinityParts{strategy: strategy}
	if strategy != routing.Prefix && strategy != routing.Session {
		return p, nil
	}
	ac := cfg.Routing.Affinity
	// Each (backend, model) keeps what its slots can hold.
	slots := map[string]int{}
	for _, b := range cfg.Backends {
		slots[b.Name] = cmp.Or(b.MaxConcurrency, cfg.Routing.MaxConcurrency)
	}
	p.index = affinity.NewIndex(ac.MaxEntries, ac.TTL, affinity.PerTarget(func(t affinity.Target) int {
		return ac.TargetBlocks(cmp.Or(slots[t.Backend], cfg.Routing.MaxConcurrency))
	}))
	p.metrics = m.NewAffinity(p.index.Len)
	ra := &routing.Affinity{
		Index:           p.index,
		Parser:          affinity.Parser{BlockBytes: ac.BlockBytes, Chain: strategy == routing.Prefix, DefaultOutput: cfg.Limits.DefaultOutputTokens},
		LoadBound:       ac.LoadBound,
		LoadBoundTokens: ac.LoadBoundTokens,
		Outcome:         p.metrics.Pick,
		Slotted:         p.metrics.Slotted,
		// Ollama's slots as this replica fills them, each holding a
		// context of prompt (docs/routing.md).
		Slots: affinity.NewSlots(ac.TTL, ac.TargetBlocks(1)),
	}
	if conn == nil || !ac.Sharing() {
		return p, ra
	}
	known := map[string]bool{}
	for _, b := range cfg.Backends {
		known[b.Name] = true
	}
	p.sharer, err = affinity.NewSharer(affinity.SharerOptions{Conn: conn, Replica: cfg.Replica, Index: p.index, Interval: ac.ShareInterval, SlotInterval: ac.SlotShareInterval,
		Known: func(b string) bool { return known[b] }, Observe: p.metrics.Share, Log: log, Loads: p.tokenLoads,
		Slots: func(replica string, events []affinity.SlotEvent) {
			ra.Slots.Apply(replica, events, time.Now())
			// Another replica's waiter taking its kept slot or giving it
			// up frees what this replica's requests were held back from
			// (routing's warmKeptLocked): they go now, not when the
			// keeping lapses.
			if r := p.router.Load(); r != nil {
				r.Recheck()
			}
		}})
	if err != nil {
		log.Error("affinity index not shared: each replica learns alone", "err", err)
		return p, ra
	}
	ra.Inserted = p.sharer.Inserted
	ra.RemoteTokens = p.sharer.Tokens
	ra.Alone = p.sharer.Alone
	// The replicas' slot models hear each other's grants: each sees the
	// fleet's requests (docs/routing.md).
	ra.SlotEvent = p.sharer.SlotEvent
	// An entry used again is re-sent once the replicas last heard of it
	// five intervals ago (250 ms by default): the others' copies neither
	// age out nor, under the per-backend bound, get evicted before the
	// entries their own traffic touches (docs/routing.md).
	ra.Refresh = min(ac.TTL/5, 5*ac.ShareInterval)
	return p, ra
}

// attach gives the sharer the router whose token loads it shares.
func (p *affinityParts) attach(r *routing.Router) { p.router.Store(r) }

func (p *affinityParts) tokenLoads() map[string]int64 {
	if r := p.router.Load(); r != nil {
		return r.TokenLoads()
	}
	return nil
}

// status is /health's affinity summary (nil: the strategy keeps no index).
func (p *affinityParts) status() any {
	if p.metrics == nil {
		return map[string]any{"strategy": p.strategy.String()}
	}
	return p.metrics.Status(p.strategy.String(), p.index.Len())
}

func (p *affinityParts) close() {
	if p.sharer != nil {
		p.sharer.Close()
	}
}
