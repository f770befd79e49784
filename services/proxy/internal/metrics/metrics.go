// Package metrics defines the proxy's Prometheus metrics on a registry of
// its own, so that several replicas can live in one test process. Latencies
// are histograms, never averages.
package metrics

import (
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// Metrics are the proxy's collectors.
type Metrics struct {
	Registry *prometheus.Registry

	requests  *prometheus.CounterVec
	duration  *prometheus.HistogramVec
	ttfb      *prometheus.HistogramVec
	attempts  *prometheus.CounterVec
	queueWait *prometheus.HistogramVec
	lockWait  *prometheus.HistogramVec
	fetches   *prometheus.CounterVec
	fetchTime *prometheus.HistogramVec
	tokens    *prometheus.CounterVec
	unknown   *prometheus.CounterVec
}

// latencyBuckets span sub-millisecond proxy overhead to multi-minute
// generations.
var latencyBuckets = []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600}

// New registers every collector on reg (a new registry when nil),
// including the Go runtime and process collectors.
func New(reg *prometheus.Registry) *Metrics {
	if reg == nil {
		reg = prometheus.NewRegistry()
	}
	m := &Metrics{
		Registry: reg,
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "drover_requests_total", Help: "Finished requests by route, backend, model and status.",
		}, []string{"route", "backend", "model", "status"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "drover_request_duration_seconds", Help: "Time from request arrival to the end of the response.", Buckets: latencyBuckets,
		}, []string{"route", "backend", "model", "status"}),
		ttfb: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "drover_time_to_first_byte_seconds", Help: "Time from request arrival to the first response byte from the backend.", Buckets: latencyBuckets,
		}, []string{"route", "backend", "model"}),
		attempts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "drover_failovers_total", Help: "Requests that needed more than one backend attempt, by route.",
		}, []string{"route"}),
		queueWait: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "drover_queue_wait_seconds", Help: "Time requests waited for a slot, by outcome (granted, full, timeout, cancelled).", Buckets: latencyBuckets,
		}, []string{"outcome"}),
		lockWait: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "drover_lock_wait_seconds", Help: "Time spent waiting for the router's hot locks.",
			Buckets: []float64{1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 0.1},
		}, []string{"lock"}),
		fetches: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "drover_cache_refreshes_total", Help: "Model-list (models) and loaded-model (loaded) fetches per backend, by result.",
		}, []string{"cache", "backend", "result"}),
		fetchTime: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "drover_cache_refresh_seconds", Help: "Duration of cache refresh fetches.", Buckets: latencyBuckets,
		}, []string{"cache"}),
		tokens: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "drover_tokens_total", Help: "Tokens reported by backends, by direction (input, output).",
		}, []string{"backend", "model", "direction"}),
		unknown: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "drover_usage_unknown_total", Help: "Successful requests whose backend reported no token counts.",
		}, []string{"backend", "route"}),
	}
	reg.MustRegister(m.requests, m.duration, m.ttfb, m.attempts, m.queueWait, m.lockWait, m.fetches, m.fetchTime, m.tokens, m.unknown,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// Request records one finished request.
func (m *Metrics) Request(route, backend, model string, status int, ttfb, total time.Duration, attempts int) {
	s := strconv.Itoa(status)
	m.requests.WithLabelValues(route, backend, model, s).Inc()
	m.duration.WithLabelValues(route, backend, model, s).Observe(total.Seconds())
	if ttfb > 0 {
		m.ttfb.WithLabelValues(route, backend, model).Observe(ttfb.Seconds())
	}
	if attempts > 1 {
		m.attempts.WithLabelValues(route).Inc()
	}
}

// Tokens records what a backend reported; known is false when it reported
// nothing.
func (m *Metrics) Tokens(backend, model, route string, in, out int64, known bool) {
	if !known {
		m.unknown.WithLabelValues(backend, route).Inc()
		return
	}
	m.tokens.WithLabelValues(backend, model, "input").Add(float64(in))
	m.tokens.WithLabelValues(backend, model, "output").Add(float64(out))
}

// QueueWait records a routing decision's wait.
func (m *Metrics) QueueWait(outcome string, d time.Duration) {
	m.queueWait.WithLabelValues(outcome).Observe(d.Seconds())
}

// LockWait records time spent acquiring a named lock.
func (m *Metrics) LockWait(lock string, d time.Duration) {
	m.lockWait.WithLabelValues(lock).Observe(d.Seconds())
}

// Fetch records a cache refresh.
func (m *Metrics) Fetch(cache, backend string, err error, took time.Duration) {
	result := "ok"
	if err != nil {
		result = "error"
	}
	m.fetches.WithLabelValues(cache, backend, result).Inc()
	m.fetchTime.WithLabelValues(cache).Observe(took.Seconds())
}

// GaugeSource reads live state at scrape time.
type GaugeSource struct {
	InFlight func() map[string]map[string]int // backend -> model -> n
	Queue    func() int
	Breakers func() map[string]int // backend -> 0 closed, 1 open, 2 half-open
}

// Watch registers gauges computed from src at each scrape, so the request
// path pays nothing for them.
func (m *Metrics) Watch(src GaugeSource) {
	m.Registry.MustRegister(
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "drover_queue_depth", Help: "Requests waiting for a slot."}, func() float64 { return float64(src.Queue()) }),
		&liveCollector{src: src},
	)
}

var (
	inflightDesc = prometheus.NewDesc("drover_in_flight", "Requests in flight on this replica per backend and model.", []string{"backend", "model"}, nil)
	breakerDesc  = prometheus.NewDesc("drover_backend_breaker_state", "Breaker state per backend: 0 closed, 1 open, 2 half-open.", []string{"backend"}, nil)
)

type liveCollector struct{ src GaugeSource }

func (c *liveCollector) Describe(ch chan<- *prometheus.Desc) { ch <- inflightDesc; ch <- breakerDesc }

func (c *liveCollector) Collect(ch chan<- prometheus.Metric) {
	for b, models := range c.src.InFlight() {
		for model, n := range models {
			ch <- prometheus.MustNewConstMetric(inflightDesc, prometheus.GaugeValue, float64(n), b, model)
		}
	}
	for b, s := range c.src.Breakers() {
		ch <- prometheus.MustNewConstMetric(breakerDesc, prometheus.GaugeValue, float64(s), b)
	}
}
