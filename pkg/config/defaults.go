package config

import (
	"reflect"
	"time"
)

// Names every service and tool must agree on.
const (
	// UsageSubjectPrefix starts every usage subject: events go to
	// usage.v1.<partition>. Model names never go in subjects (they contain
	// dots).
	UsageSubjectPrefix = "usage.v1."
	// AggregatorConsumerPrefix names the aggregator's durable consumer of
	// partition p: the prefix followed by p.
	AggregatorConsumerPrefix = "drover-aggregator-p"
	// DefaultStream is the JetStream stream of usage events (nats.stream).
	DefaultStream = "USAGE"
	// DefaultDeadLetterSubject receives usage messages the aggregator
	// cannot store (aggregator.dead_letter_subject).
	DefaultDeadLetterSubject = "drover.usage.deadletter"
	// SubjectInFlight carries each proxy replica's in-flight counts per
	// (backend, model), on change and as a heartbeat (docs/fleet.md).
	SubjectInFlight = "drover.inflight"
	// SubjectAffinity carries each proxy replica's inserts into its index
	// of cached prompt prefixes per (backend, model) (docs/routing.md).
	SubjectAffinity = "drover.affinity"
	// SubjectLimits carries each proxy replica's limit reservations and
	// settlements (services/proxy/internal/limits, docs/limits.md).
	SubjectLimits = "drover.limits.ledger"
	// SubjectInvalidate carries cache invalidations between replicas.
	SubjectInvalidate = "drover.cache.invalidate"
)

// The defaults below are what Load and FromStruct fill into a Config, and
// what packages built without one (usagepub, ingest, live, chstore) fall
// back to, so that both agree.

// DefaultPort is the proxy's port, one above Ollama's 11434; the CLI and
// the local load balancer assume it too.
const DefaultPort = "12434"

// DefaultListen is the proxy's address: loopback, as Ollama's own default,
// so that a proxy started without keys is reachable from this machine only.
const DefaultListen = "127.0.0.1:" + DefaultPort

// DefaultKeysBucket is the JetStream KV bucket of run-time API keys.
const DefaultKeysBucket = "drover_keys"

// UsageLiveSubjectPrefix is where the usage stream republishes every
// stored event (usage.live.<partition>, with its stream sequence in the
// Nats-Sequence header) for the proxies' live fleet totals: proxies may
// subscribe to it, only the NATS server publishes to it.
const UsageLiveSubjectPrefix = "usage.live."

// DefaultNATS is the nats section's defaults; the URL has none.
func DefaultNATS() NATS {
	return NATS{
		Stream:          DefaultStream,
		MaxAge:          7 * 24 * time.Hour,
		MaxBytes:        1 << 30,
		DuplicateWindow: 10 * time.Minute,
		Partitions:      8,
		Replicas:        1,
	}
}

// DefaultUsage is the usage section's defaults.
func DefaultUsage() Usage {
	return Usage{
		QueueSize:         65536,
		SpoolDir:          "./data/spool",
		SpoolMaxBytes:     1 << 30,
		SpoolSyncInterval: 100 * time.Millisecond,
		BatchSize:         500,
		BatchLinger:       50 * time.Millisecond,
		PublishMode:       "batch",
		AckTimeout:        5 * time.Second,
	}
}

// DefaultClickHouse is the clickhouse section's defaults; the address has
// none.
func DefaultClickHouse() ClickHouse {
	return ClickHouse{
		Database:    "drover",
		Username:    "default",
		DialTimeout: 5 * time.Second,
		ReadTimeout: 30 * time.Second,
	}
}

// DefaultAggregator is the aggregator section's defaults; Instance
// defaults to the replica name.
func DefaultAggregator() Aggregator {
	return Aggregator{
		BatchSize:         20000,
		FlushInterval:     500 * time.Millisecond,
		MetricsListen:     ":9464",
		LeaseBucket:       "drover_aggregator",
		LeaseTTL:          10 * time.Second,
		FetchBatch:        2000,
		DeadLetterSubject: DefaultDeadLetterSubject,
		RetryMax:          30 * time.Second,
		ShutdownTimeout:   30 * time.Second,
	}
}

// DefaultLimits is the limits section's defaults.
func DefaultLimits() Limits { return Limits{DefaultOutputTokens: 512, Admission: "reserve"} }

// DefaultAuth is the auth section's defaults.
func DefaultAuth() Auth {
	return Auth{Bucket: DefaultKeysBucket, StateFile: "./data/keys.json"}
}

// DefaultInteractiveHeadroom is routing.queue.interactive_headroom's
// default: one slot of a model kept from batch requests while interactive
// ones are about.
const DefaultInteractiveHeadroom = 1

// DefaultInteractivePeak is routing.queue.interactive_peak's default:
// batch requests also leave free what interactive ones needed at their
// recent peak.
const DefaultInteractivePeak = true

// DefaultRouting is the routing section's defaults.
func DefaultRouting() Routing {
	return Routing{
		MaxConcurrency:   4,
		Queue:            Queue{MaxLength: 1024, MaxWait: 60 * time.Second, MaxPerKey: 256},
		MaxAttempts:      3,
		ConnectTimeout:   3 * time.Second,
		HeaderTimeout:    10 * time.Minute,
		CancelGrace:      50 * time.Millisecond,
		Strategy:         StrategyPrefix,
		FirstByteTimeout: 60 * time.Second,
		WriteTimeout:     30 * time.Second,
		Affinity:         DefaultAffinity(),
	}
}

// DefaultCache is the cache section's defaults.
func DefaultCache() Cache {
	return Cache{ModelsTTL: 5 * time.Minute, ModelsStale: 10 * time.Minute, LoadedTTL: 10 * time.Second, LoadedStale: 60 * time.Second}
}

// DefaultHealth is the health section's defaults.
func DefaultHealth() Health {
	return Health{FailureThreshold: 3, OpenFor: 2 * time.Second, OpenMax: 60 * time.Second, ProbeInterval: 2 * time.Second}
}

// DefaultBackend is a backend's defaults; its name defaults to its URL's
// host:port.
func DefaultBackend() Backend { return Backend{Type: "ollama", Weight: 1} }

// fillZero sets every zero field of *dst to def's, field by field into
// nested structs, so that a section set in part keeps what was set.
func fillZero[T any](dst *T, def T) { fillValue(reflect.ValueOf(dst).Elem(), reflect.ValueOf(def)) }

func fillValue(dst, def reflect.Value) {
	for i := range dst.NumField() {
		f := dst.Field(i)
		switch {
		case f.Kind() == reflect.Struct:
			fillValue(f, def.Field(i))
		case f.IsZero():
			f.Set(def.Field(i))
		}
	}
}
