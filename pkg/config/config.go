// Package config loads Drover's YAML configuration, applies DROVER_-prefixed
// environment overrides and validates the result. Errors name the key that is
// wrong (for example "backends[1].url: must be an http or https URL").
//
// Every scalar key can be overridden by an environment variable named after
// its path: routing.queue.max_wait is DROVER_ROUTING_QUEUE_MAX_WAIT, and the
// URL of the first backend is DROVER_BACKENDS_0_URL. Two shorthands suit
// container deployments: DROVER_BACKENDS="http://a:11434,http://b:11434"
// (replaces the list, type ollama) and DROVER_AUTH_KEYS="id1:key1,id2:key2".
package config

import (
	"time"

	"github.com/droverhq/drover/pkg/apikey"
)

// Config is the whole file. Both services read it; each uses its sections.
type Config struct {
	// Listen is the proxy's address (default "127.0.0.1:12434", loopback
	// like Ollama's own default; deployments set ":12434" with keys).
	Listen string `yaml:"listen"`
	// MetricsListen, when set, serves /metrics on its own address without a
	// key (keep it off the public network); the main listener then has no
	// /metrics. Unset, /metrics is on the main listener and needs an admin
	// key once keys exist.
	MetricsListen string `yaml:"metrics_listen"`
	// Replica names this process in usage events and heartbeats (default:
	// hostname plus pid).
	Replica  string `yaml:"replica"`
	LogLevel string `yaml:"log_level"`
	// DebugListen, when set, serves net/http/pprof on this address, apart
	// from the API (off by default; bind it to localhost).
	DebugListen string             `yaml:"debug_listen"`
	Backends    []Backend          `yaml:"backends"`
	Routing     Routing            `yaml:"routing"`
	Cache       Cache              `yaml:"cache"`
	Health      Health             `yaml:"health"`
	Auth        Auth               `yaml:"auth"`
	CORS        CORS               `yaml:"cors"`
	Limits      Limits             `yaml:"limits"`
	Aliases     map[string][]Alias `yaml:"aliases"`
	NATS        NATS               `yaml:"nats"`
	Usage       Usage              `yaml:"usage"`
	ClickHouse  ClickHouse         `yaml:"clickhouse"`
	Aggregator  Aggregator         `yaml:"aggregator"`
	// Server bounds what a client connection and a backend stream may
	// cost (server.go in this package).
	Server Server `yaml:"server"`
}

// Backend is one inference server.
type Backend struct {
	// Name identifies the backend in usage records, metrics and /health
	// (default: host:port of URL).
	Name string `yaml:"name"`
	URL  string `yaml:"url"`
	// Type is "ollama" (default) or "openai".
	Type   string `yaml:"type"`
	APIKey Secret `yaml:"api_key"`
	// MaxConcurrency caps in-flight requests per model on this backend;
	// 0 means routing.max_concurrency.
	MaxConcurrency int `yaml:"max_concurrency"`
	// Weight breaks ties between otherwise equal backends; higher wins
	// (default 1).
	Weight int `yaml:"weight"`
}

// Alias maps a public model name to a name on specific backends.
type Alias struct {
	Backend string `yaml:"backend"`
	Model   string `yaml:"model"`
}

// Routing holds slot, queue and failover settings.
type Routing struct {
	// MaxConcurrency is the default cap per (backend, model), normally the
	// backend's OLLAMA_NUM_PARALLEL (default 4).
	MaxConcurrency int   `yaml:"max_concurrency"`
	Queue          Queue `yaml:"queue"`
	// MaxAttempts bounds failover: how many backends one request may try
	// before any byte reached the client (default 3).
	MaxAttempts int `yaml:"max_attempts"`
	// ConnectTimeout bounds dialing a backend (default 3s).
	ConnectTimeout time.Duration `yaml:"connect_timeout"`
	// HeaderTimeout bounds the wait for a backend's response headers; a
	// non-streaming generation answers only when done, so keep it long
	// (default 10m).
	HeaderTimeout time.Duration `yaml:"header_timeout"`
	// CancelGrace keeps a slot reserved this long after a client cancels,
	// while the backend notices the closed connection and stops (default
	// 50ms). It keeps the cap true at the backend, not only in Drover.
	CancelGrace time.Duration `yaml:"cancel_grace"`
	// FirstByteTimeout bounds one attempt's wait for a backend that took
	// the request (default 60s): a streamed request on a backend with the
	// model loaded must have its response headers by then (Ollama sends
	// them with the first chunk, after the prompt's evaluation); any other
	// request must have been written to the backend by then (a
	// non-streamed generation answers only when done, a cold model loads
	// first: header_timeout bounds those). Past it the attempt fails over
	// and counts against the backend's breaker.
	FirstByteTimeout time.Duration `yaml:"first_byte_timeout"`
	// WriteTimeout bounds writing one chunk of an answer to the client
	// (default 30s): a client that stops reading loses its request, the
	// backend request is cancelled and the slot released.
	WriteTimeout time.Duration `yaml:"write_timeout"`
	// Strategy ranks the candidates with a free slot: prefix (default),
	// least_loaded, round_robin or session (docs/routing.md).
	Strategy string   `yaml:"strategy"`
	Affinity Affinity `yaml:"affinity"`
}

// Queue bounds the requests waiting for a free slot: by priority class,
// then shared by key weight, FIFO within a key (docs/limits.md).
type Queue struct {
	MaxLength int           `yaml:"max_length"` // default 1024
	MaxWait   time.Duration `yaml:"max_wait"`   // default 60s
	// MaxPerKey bounds one key's waiters, so one key cannot take the
	// whole queue (default 256).
	MaxPerKey int `yaml:"max_per_key"`
	// InteractiveHeadroom is how many slots of a model batch requests
	// leave free while interactive requests are about (default 1; 0:
	// batch may take every slot; docs/limits.md).
	InteractiveHeadroom *int `yaml:"interactive_headroom"`
	// InteractivePeak makes batch requests also leave free, while
	// interactive ones are about, what interactive requests held or waited
	// for at their peak in the last 10 to 20 s beyond what they hold now,
	// so that a burst as large as the last finds free slots (default true;
	// docs/limits.md).
	InteractivePeak *bool `yaml:"interactive_peak"`
	// BatchMinSlots is how many slots of a model the headroom and the peak
	// never keep from batch requests (default 0: while interactive ones
	// are about, batch gets only the slots beyond their recent peak).
	BatchMinSlots int `yaml:"batch_min_slots"`
}

// Headroom is InteractiveHeadroom with its default.
func (q Queue) Headroom() int {
	if q.InteractiveHeadroom == nil {
		return DefaultInteractiveHeadroom
	}
	return *q.InteractiveHeadroom
}

// Peak is InteractivePeak with its default.
func (q Queue) Peak() bool {
	if q.InteractivePeak == nil {
		return DefaultInteractivePeak
	}
	return *q.InteractivePeak
}

// Limits configures how keys' limits are enforced (the limits themselves
// are on the keys: auth.keys[].limits).
type Limits struct {
	// DefaultOutputTokens is the output reserved for a request that sets
	// no num_predict / max_tokens (default 512); the reservation settles
	// with the real count when the request ends.
	DefaultOutputTokens int64 `yaml:"default_output_tokens"`
	// Admission is "reserve" (default: admit against spent + every
	// replica's reservations, settle at the end) or "count" (admit while
	// spent < limit, count at the end; the naive baseline, for
	// comparison in make bench-tenancy only).
	Admission string `yaml:"admission"`
}

// Cache sets model-list and loaded-model freshness per backend.
type Cache struct {
	ModelsTTL   time.Duration `yaml:"models_ttl"`   // default 5m
	ModelsStale time.Duration `yaml:"models_stale"` // default 10m
	LoadedTTL   time.Duration `yaml:"loaded_ttl"`   // default 10s
	LoadedStale time.Duration `yaml:"loaded_stale"` // default 60s
}

// Health sets the breaker and background probes.
type Health struct {
	// FailureThreshold consecutive failures open the breaker (default 3).
	FailureThreshold int `yaml:"failure_threshold"`
	// OpenFor is the first open period; it doubles on each failed probe up
	// to OpenMax (defaults 2s and 60s).
	OpenFor time.Duration `yaml:"open_for"`
	OpenMax time.Duration `yaml:"open_max"`
	// ProbeInterval is how often open backends are probed (default 2s).
	ProbeInterval time.Duration `yaml:"probe_interval"`
}

// Auth lists API keys. Keys also live in a JetStream key-value bucket,
// managed at run time (droverctl keys); the file's keys bootstrap the first
// admin. With no key anywhere the proxy is open (every caller is an admin
// recorded as "anonymous"), which it allows only on a loopback listener
// unless Open says so.
type Auth struct {
	Keys []APIKey `yaml:"keys"`
	// Open lets a proxy on a non-loopback address start without keys.
	Open bool `yaml:"open"`
	// Bucket is the JetStream KV bucket of run-time keys (default
	// "drover_keys"); it holds SHA-256 digests, never secrets.
	Bucket string `yaml:"bucket"`
	// StateFile keeps the last key set read from the bucket (digests only),
	// so a replica started while NATS is down serves with it (default
	// "./data/keys.json").
	StateFile string `yaml:"state_file"`
}

// APIKey is one credential. ID is what usage records carry; the key
// itself is never logged.
type APIKey struct {
	ID  string `yaml:"id"`
	Key Secret `yaml:"key"`
	// Role is "client" (default: inference, listings, its own usage) or
	// "admin" (also model management, caches, config, every key's usage,
	// key management).
	Role string `yaml:"role"`
	// Models, when set, are glob patterns (path.Match, e.g. "llama3*") of
	// the only models this key may use or see.
	Models []string `yaml:"models"`
	// Limits bound the key's requests and tokens (docs/limits.md);
	// ModelLimits bound its requests for one model, on top.
	Limits      apikey.Limits            `yaml:"limits"`
	ModelLimits map[string]apikey.Limits `yaml:"model_limits"`
	// Weight is the key's share of the queue within its class (default 1);
	// Class is its priority class: interactive (default) or batch.
	Weight int    `yaml:"weight"`
	Class  string `yaml:"class"`
}

// CORS lets browsers on other origins call the API.
type CORS struct {
	// Origins allowed to call cross-origin ("https://app.example.com");
	// none by default. Preflight requests from them need no key.
	Origins []string `yaml:"origins"`
}

// TLS configures a client connection's TLS. For NATS a tls:// URL or any
// field here turns it on; for ClickHouse, Enabled (or any file) does.
type TLS struct {
	Enabled bool `yaml:"enabled"`
	// CAFile verifies the server (default: the system's roots).
	CAFile string `yaml:"ca_file"`
	// CertFile and KeyFile are a client certificate, for servers that
	// require one.
	CertFile string `yaml:"cert_file"`
	KeyFile  string `yaml:"key_file"`
	// ServerName overrides the name checked in the server's certificate.
	ServerName string `yaml:"server_name"`
}

// On reports whether TLS is wanted.
func (t TLS) On() bool { return t.Enabled || t.CAFile != "" || t.CertFile != "" }

// NATS is the connection shared by publishing, consuming and fleet state.
type NATS struct {
	// URL of the NATS server(s): one URL, or a cluster's as a
	// comma-separated list (clients reconnect to any of them); empty
	// disables everything NATS-backed.
	URL string `yaml:"url"`
	// Stream is the JetStream stream for usage events (default "USAGE").
	Stream string `yaml:"stream"`
	// MaxAge and MaxBytes limit the stream (defaults 168h and 1 GiB).
	MaxAge   time.Duration `yaml:"max_age"`
	MaxBytes int64         `yaml:"max_bytes"`
	// DuplicateWindow deduplicates republished events (default 10m).
	DuplicateWindow time.Duration `yaml:"duplicate_window"`
	// Partitions is the number of usage subjects usage.v1.<p> (default 8).
	Partitions int `yaml:"partitions"`
	// Replicas is how many servers of a NATS cluster keep a copy of the
	// usage stream and the key and lease buckets (default 1, a single
	// server; 3 in a three-node cluster, which then survives the loss of
	// one node). 1 to 5.
	Replicas int `yaml:"replicas"`
	// Credentials: at most one of User (with Password), NKeySeedFile or
	// CredsFile. Shipped deployments give each service its own user with
	// only the subjects it needs (deploy/nats/nats.conf, docs/security.md).
	User         string `yaml:"user"`
	Password     Secret `yaml:"password"`
	NKeySeedFile string `yaml:"nkey_seed_file"`
	CredsFile    string `yaml:"creds_file"`
	TLS          TLS    `yaml:"tls"`
}

// Usage configures the proxy's event sink.
type Usage struct {
	// QueueSize is no longer used: every event goes to the spool before
	// its answer ends (docs/pipeline.md), which is the publisher's queue.
	// Kept so that existing config files still load.
	QueueSize int `yaml:"queue_size"`
	// SpoolDir holds every event until JetStream has stored it (default
	// "./data/spool"); SpoolMaxBytes bounds it (default 1 GiB).
	SpoolDir      string `yaml:"spool_dir"`
	SpoolMaxBytes int64  `yaml:"spool_max_bytes"`
	// SpoolSyncInterval is how often spooled events are fsync'd: a machine
	// crash can lose at most this much of the spool (default 100ms).
	SpoolSyncInterval time.Duration `yaml:"spool_sync_interval"`
	// BatchSize is the most events published as one JetStream batch
	// (default 500); BatchLinger is how long new events may wait for more
	// after the previous batch left (default 50ms). One batch is in flight
	// at a time.
	BatchSize   int           `yaml:"batch_size"`
	BatchLinger time.Duration `yaml:"batch_linger"`
	// PublishMode is "batch" (JetStream fast batches, one ack per batch;
	// NATS 2.14 or later, with a fallback) or "message" (one ack per event).
	PublishMode string `yaml:"publish_mode"`
	// AckTimeout is how long a batch waits for its ack before its events
	// are spooled and NATS is treated as slow (default 5s).
	AckTimeout time.Duration `yaml:"ack_timeout"`
}

// ClickHouse is where token analytics live.
type ClickHouse struct {
	// Addr is host:port of the native protocol (empty disables analytics).
	Addr     string `yaml:"addr"`
	Database string `yaml:"database"` // default "drover"
	Username string `yaml:"username"` // default "default"
	Password Secret `yaml:"password"`
	// DialTimeout bounds connecting (default 5s); ReadTimeout bounds waiting
	// for a query or insert to answer (default 30s).
	DialTimeout time.Duration `yaml:"dial_timeout"`
	ReadTimeout time.Duration `yaml:"read_timeout"`
	TLS         TLS           `yaml:"tls"`
}

// Aggregator configures batching from JetStream into ClickHouse.
type Aggregator struct {
	BatchSize     int           `yaml:"batch_size"`     // default 20000
	FlushInterval time.Duration `yaml:"flush_interval"` // default 500ms
	// MetricsListen serves /metrics and /health (default ":9464").
	MetricsListen string `yaml:"metrics_listen"`
	// Instance names this aggregator in partition leases (default: replica).
	Instance string `yaml:"instance"`
	// LeaseBucket is the JetStream KV bucket of partition leases (default
	// "drover_aggregator"); LeaseTTL is how long a lease outlives its
	// holder's last renewal, so how soon a crashed aggregator's partitions
	// move (default 10s).
	LeaseBucket string        `yaml:"lease_bucket"`
	LeaseTTL    time.Duration `yaml:"lease_ttl"`
	// FetchBatch is how many messages each partition pulls ahead (default 2000).
	FetchBatch int `yaml:"fetch_batch"`
	// DeadLetterSubject receives undecodable usage messages (default
	// "drover.usage.deadletter"; must not be under usage.v1.>).
	DeadLetterSubject string `yaml:"dead_letter_subject"`
	// RetryMax caps the backoff between failed inserts (default 30s).
	RetryMax time.Duration `yaml:"retry_max"`
	// ShutdownTimeout bounds the final flush on SIGTERM (default 30s).
	ShutdownTimeout time.Duration `yaml:"shutdown_timeout"`
}

// Secret is a string that never prints itself.
type Secret string

// String hides the value so that a logged config shows no secrets.
func (s Secret) String() string {
	if s == "" {
		return ""
	}
	return "[redacted]"
}

// GoString hides the value from %#v as well.
func (s Secret) GoString() string { return `"` + s.String() + `"` }

// Reveal returns the secret for use on the wire.
func (s Secret) Reveal() string { return string(s) }
