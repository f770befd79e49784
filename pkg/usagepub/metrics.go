package usagepub

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics reads the publisher's own counters (one source of truth for
// Stats and Prometheus); only the latency histogram is kept here.
type metrics struct {
	reg        prometheus.Registerer
	collectors []prometheus.Collector
	latency    prometheus.Histogram
	batchSize  prometheus.Histogram
}

func newMetrics(p *Publisher, reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{reg: reg}
	m.latency = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "drover_usage_publish_latency_seconds",
		Help:    "Time from sending a batch of usage events to JetStream's ack of all of it.",
		Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14),
	})
	m.batchSize = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "drover_usage_publish_batch_events",
		Help:    "Usage events per batch stored by JetStream.",
		Buckets: prometheus.ExponentialBuckets(1, 2, 11),
	})
	counter := func(name, help string, f func() float64) prometheus.Collector {
		return prometheus.NewCounterFunc(prometheus.CounterOpts{Name: name, Help: help}, f)
	}
	gauge := func(name, help string, f func() float64) prometheus.Collector {
		return prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: name, Help: help}, f)
	}
	b2f := func(b bool) float64 {
		if b {
			return 1
		}
		return 0
	}
	m.collectors = []prometheus.Collector{
		m.latency, m.batchSize,
		counter("drover_usage_events_published_total", "Usage events acknowledged by JetStream on their first sending.",
			func() float64 { return float64(p.published.Load()) }),
		counter("drover_usage_events_spooled_total", "Usage events held in the spool while NATS was unavailable.",
			func() float64 { return float64(p.spooled.Load()) }),
		counter("drover_usage_events_replayed_total", "Usage events acknowledged by JetStream after being held in the spool (or left by a previous run).",
			func() float64 { return float64(p.replayed.Load()) }),
		counter("drover_usage_events_dropped_total", "Usage events lost because the spool was full.",
			func() float64 { return float64(p.dropped.Load()) }),
		gauge("drover_usage_queue_depth", "Usage events in the spool not yet sent.",
			func() float64 { return float64(p.Stats().QueueDepth) }),
		gauge("drover_usage_pending_acks", "Usage events sent to JetStream and awaiting its ack.",
			func() float64 { return float64(p.pendingAcks.Load()) }),
		gauge("drover_usage_spool_pending_events", "Usage events in the spool whose publication is not yet recorded there (persisted once per sync interval).",
			func() float64 { return float64(p.sp.Stats().Pending) }),
		gauge("drover_usage_spool_bytes", "Size of the usage spool on disk.",
			func() float64 { return float64(p.sp.Stats().Bytes) }),
		gauge("drover_usage_publishing", "1 while usage events are published to NATS, 0 while they wait in the spool.",
			func() float64 { return b2f(p.online.Load()) }),
	}
	if reg == nil {
		return m, nil
	}
	for i, c := range m.collectors {
		if err := reg.Register(c); err != nil {
			for _, done := range m.collectors[:i] {
				reg.Unregister(done)
			}
			return nil, fmt.Errorf("usagepub: registering metrics: %w", err)
		}
	}
	return m, nil
}

// unregister removes the metrics so that a replacement publisher can
// register its own.
func (m *metrics) unregister() {
	if m.reg == nil {
		return
	}
	for _, c := range m.collectors {
		m.reg.Unregister(c)
	}
}
