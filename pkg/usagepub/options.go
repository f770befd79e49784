package usagepub

import (
	"log/slog"
	"time"

	"github.com/droverhq/drover/pkg/config"
	"github.com/droverhq/drover/pkg/usage"
	"github.com/prometheus/client_golang/prometheus"
)

// Option configures a Publisher.
type Option func(*options)

type options struct {
	stream        usage.StreamConfig
	partitions    int
	spoolDir      string
	spoolMaxBytes int64
	syncInterval  time.Duration
	batchSize     int
	linger        time.Duration
	perMessage    bool
	ackTimeout    time.Duration
	retryInterval time.Duration
	checkInterval time.Duration
	createStream  bool
	reg           prometheus.Registerer
	log           *slog.Logger
}

// defaultOptions are the config file's defaults (config.DefaultNATS and
// config.DefaultUsage) plus the publisher's own.
func defaultOptions() options {
	o := options{
		retryInterval: time.Second,
		checkInterval: 200 * time.Millisecond,
		log:           slog.Default(),
	}
	WithConfig(config.DefaultNATS(), config.DefaultUsage())(&o)
	return o
}

// WithConfig applies the nats and usage sections of the config file.
func WithConfig(n config.NATS, u config.Usage) Option {
	return func(o *options) {
		o.stream = usage.StreamConfig{Name: n.Stream, MaxAge: n.MaxAge,
			MaxBytes: n.MaxBytes, DuplicateWindow: n.DuplicateWindow}
		setIf(&o.partitions, n.Partitions)
		setIf(&o.spoolDir, u.SpoolDir)
		setIf(&o.spoolMaxBytes, u.SpoolMaxBytes)
		setIf(&o.syncInterval, u.SpoolSyncInterval)
		setIf(&o.batchSize, u.BatchSize)
		setIf(&o.linger, u.BatchLinger)
		o.perMessage = u.PublishMode == "message"
		setIf(&o.ackTimeout, u.AckTimeout)
	}
}

func setIf[T comparable](dst *T, v T) {
	var zero T
	if v != zero {
		*dst = v
	}
}

// WithStream sets the stream published to: its name, and with
// WithCreateStream the configuration it is created with.
func WithStream(cfg usage.StreamConfig) Option { return func(o *options) { o.stream = cfg } }

// WithCreateStream makes the publisher create or update the stream itself
// (usage.EnsureStream) instead of waiting for it, for tests and benchmarks
// that run no aggregator. In a deployment the aggregator owns the stream
// and the proxies' NATS user may not create it.
func WithCreateStream() Option { return func(o *options) { o.createStream = true } }

// WithPartitions sets the number of subjects usage.v1.<p> (default 8).
func WithPartitions(n int) Option { return func(o *options) { setIf(&o.partitions, n) } }

// WithSpool sets the spool directory and its size bound (defaults
// "./data/spool" and 1 GiB).
func WithSpool(dir string, maxBytes int64) Option {
	return func(o *options) { setIf(&o.spoolDir, dir); setIf(&o.spoolMaxBytes, maxBytes) }
}

// WithSpoolSyncInterval sets how often the spool is fsync'd, and its read
// position persisted (default 100ms): what a host crash can lose.
func WithSpoolSyncInterval(d time.Duration) Option {
	return func(o *options) { setIf(&o.syncInterval, d) }
}

// WithBatch sets the most events sent as one batch (default 500) and how
// long events may wait for more to join them after the previous batch left
// (default 50ms).
func WithBatch(size int, linger time.Duration) Option {
	return func(o *options) { setIf(&o.batchSize, size); setIf(&o.linger, linger) }
}

// WithPerMessageAcks publishes every event with its own ack instead of as
// fast batches (for servers before NATS 2.14; the publisher also falls back
// on its own when the server refuses fast batches).
func WithPerMessageAcks() Option { return func(o *options) { o.perMessage = true } }

// WithAckTimeout is how long a batch may wait for its ack before its
// events are spooled and the publisher treats NATS as slow (default 5s).
func WithAckTimeout(d time.Duration) Option { return func(o *options) { setIf(&o.ackTimeout, d) } }

// WithRetryInterval is how long the publisher keeps spooling after a
// failure before it tries NATS again (default 1s).
func WithRetryInterval(d time.Duration) Option {
	return func(o *options) { setIf(&o.retryInterval, d) }
}

// WithRegisterer registers the publisher's metrics; without it they are
// not registered.
func WithRegisterer(r prometheus.Registerer) Option { return func(o *options) { o.reg = r } }

// WithLogger sets the logger (default slog.Default()).
func WithLogger(l *slog.Logger) Option {
	return func(o *options) {
		if l != nil {
			o.log = l
		}
	}
}
