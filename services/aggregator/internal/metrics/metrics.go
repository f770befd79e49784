// Package metrics holds the aggregator's Prometheus collectors on a registry
// of its own, so that tests can run several aggregators in one process.
package metrics

import (
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Metrics are the aggregator's collectors. All fields are safe for
// concurrent use.
type Metrics struct {
	Registry *prometheus.Registry

	BatchSize       prometheus.Histogram
	InsertSeconds   prometheus.Histogram
	InsertFailures  prometheus.Counter
	EventsInserted  prometheus.Counter
	Duplicates      prometheus.Counter
	Redeliveries    prometheus.Counter
	DeadLettered    prometheus.Counter
	ConsumerLag     *prometheus.GaugeVec
	PartitionsOwned prometheus.Gauge
	LeasesLost      prometheus.Counter
}

// New creates the collectors on a fresh registry. withProcess adds the Go
// runtime and process collectors (for the real binary, not for tests).
func New(withProcess bool) *Metrics {
	m := &Metrics{
		Registry: prometheus.NewRegistry(),
		BatchSize: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "drover_aggregator_batch_size", Help: "Events per ClickHouse insert.",
			Buckets: prometheus.ExponentialBuckets(1, 4, 10),
		}),
		InsertSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "drover_aggregator_insert_seconds", Help: "Latency of successful ClickHouse inserts.",
			Buckets: prometheus.ExponentialBuckets(0.001, 2, 15),
		}),
		InsertFailures: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "drover_aggregator_insert_failures_total", Help: "ClickHouse inserts that failed and will be retried.",
		}),
		EventsInserted: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "drover_aggregator_events_inserted_total", Help: "Usage events written to ClickHouse.",
		}),
		Duplicates: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "drover_aggregator_duplicates_skipped_total", Help: "Deliveries skipped because their stream sequence was already stored or held.",
		}),
		Redeliveries: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "drover_aggregator_redeliveries_total", Help: "Messages JetStream delivered more than once.",
		}),
		DeadLettered: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "drover_aggregator_dead_lettered_total", Help: "Undecodable usage messages sent to the dead-letter subject.",
		}),
		ConsumerLag: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "drover_aggregator_consumer_lag", Help: "Messages not yet acknowledged per owned partition (pending plus ack-pending).",
		}, []string{"partition"}),
		PartitionsOwned: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "drover_aggregator_partitions_owned", Help: "Usage partitions whose lease this instance holds.",
		}),
		LeasesLost: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "drover_aggregator_leases_lost_total", Help: "Partition leases lost without releasing them (renewal failed).",
		}),
	}
	m.Registry.MustRegister(m.BatchSize, m.InsertSeconds, m.InsertFailures, m.EventsInserted, m.Duplicates,
		m.Redeliveries, m.DeadLettered, m.ConsumerLag, m.PartitionsOwned, m.LeasesLost)
	if withProcess {
		m.Registry.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	}
	return m
}

// Handler serves the registry in the Prometheus text format.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.Registry, promhttp.HandlerOpts{Registry: m.Registry})
}
