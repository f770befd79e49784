// Package server wires the proxy together: configuration in, one
// http.Handler out, with a Close that stops every goroutine it started.
package server

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/go-chi/chi/v5/middleware"
	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/droverhq/drover/pkg/analytics"
	"github.com/droverhq/drover/pkg/apikey"
	"github.com/droverhq/drover/pkg/chstore"
	"github.com/droverhq/drover/pkg/config"
	"github.com/droverhq/drover/pkg/usage"
	"github.com/droverhq/drover/services/proxy/internal/anthropicapi"
	"github.com/droverhq/drover/services/proxy/internal/auth"
	"github.com/droverhq/drover/services/proxy/internal/backend"
	"github.com/droverhq/drover/services/proxy/internal/dashboard"
	"github.com/droverhq/drover/services/proxy/internal/fleet"
	"github.com/droverhq/drover/services/proxy/internal/fleetsync"
	"github.com/droverhq/drover/services/proxy/internal/forward"
	"github.com/droverhq/drover/services/proxy/internal/keystore"
	"github.com/droverhq/drover/services/proxy/internal/limits"
	"github.com/droverhq/drover/services/proxy/internal/limitsapi"
	"github.com/droverhq/drover/services/proxy/internal/live"
	"github.com/droverhq/drover/services/proxy/internal/metrics"
	"github.com/droverhq/drover/services/proxy/internal/ollamaapi"
	"github.com/droverhq/drover/services/proxy/internal/openaiapi"
	"github.com/droverhq/drover/services/proxy/internal/routing"
)

// Server is one proxy replica.
type Server struct {
	Config  *config.Config
	Fleet   *fleet.Fleet
	Router  *routing.Router
	Totals  *usage.Totals
	Forward *forward.Forwarder
	Metrics *metrics.Metrics
	Sync    *fleetsync.Sync
	Live    *live.Live
	// Limits admits requests against their keys' limits, fleet-wide.
	Limits *limits.Ledger
	// Keys are the valid API keys: the config file's and, replaced as the
	// key bucket changes, the run-time ones.
	Keys *auth.Keys
	// keyStore follows the key bucket and feeds Keys; it serves /api/keys.
	keyStore *keystore.Store
	affinity *affinityParts
	log      *slog.Logger

	usageStatus func() any
	analytics   *analytics.Handler
	handler     http.Handler
}

// Options are the parts a caller may supply.
type Options struct {
	// Sink receives every usage event besides the local totals (the
	// JetStream publisher in production); nil for none.
	Sink usage.Sink
	// SyncConn is a NATS connection for sharing in-flight counts and cache
	// invalidations with the other replicas (the server owns its handlers);
	// nil routes on this replica's counts only.
	SyncConn *nats.Conn
	// Registry collects the proxy's metrics (a new one when nil), so that
	// parts built outside, like the usage publisher, appear on /metrics.
	Registry *prometheus.Registry
	// UsageStatus, if set, is shown in /health (the publisher's state).
	UsageStatus func() any
	// ClickHouse, if set, gives /api/usage the fleet's token totals (with
	// SyncConn, which follows the usage stream) and the dashboard its
	// charts; nil shows this replica's totals.
	ClickHouse *chstore.Store
}

// New builds a replica from cfg.
func New(cfg *config.Config, log *slog.Logger, opts Options) *Server {
	s := &Server{Config: cfg, log: log, Totals: usage.NewTotals(), Keys: auth.New(cfg.Auth.Keys)}
	s.Metrics = metrics.New(opts.Registry)
	s.usageStatus = opts.UsageStatus
	// Run-time keys: the bucket's whole set replaces the bucket part of
	// s.Keys on every change (no bucket, config keys only, without NATS).
	s.keyStore = keystore.Open(keystore.Options{Conn: opts.SyncConn, Bucket: cfg.Auth.Bucket, Replicas: cfg.NATS.Replicas, StateFile: cfg.Auth.StateFile, Log: log,
		OnChange: func(recs []apikey.Record) {
			if skipped := s.Keys.SetBucket(recs); len(skipped) > 0 {
				log.Warn("key bucket entries ignored: the config file defines these ids", "keys", skipped)
			}
		}})
	s.Sync = fleetsync.New(opts.SyncConn, fleetsync.Options{Replica: cfg.Replica, Limits: fleetsync.LimitsFor(cfg), Registerer: s.Metrics.Registry}, log)
	s.Fleet = fleet.New(cfg, log, fleet.Hooks{Fetch: s.Metrics.Fetch})
	s.Fleet.OnInvalidate = s.Sync.PublishInvalidate
	var affinity *routing.Affinity
	s.affinity, affinity = newAffinity(cfg, s.Metrics, opts.SyncConn, log)
	s.Router = routing.New(routing.Options{
		Strategy: s.affinity.strategy,
		Affinity: affinity,
		MaxQueue: cfg.Routing.Queue.MaxLength,
		// One key's waiters are bounded too, so one key cannot fill the queue.
		MaxPerKey: cfg.Routing.Queue.MaxPerKey,
		MaxWait:   cfg.Routing.Queue.MaxWait,
		// Batch leaves a slot for interactive requests while they are about.
		InteractiveHeadroom: cfg.Routing.Queue.Headroom(),
		InteractivePeak:     cfg.Routing.Queue.Peak(),
		BatchMinSlots:       cfg.Routing.Queue.BatchMinSlots,
		Observe:             s.observeQueue,
		LockWait:            func(d time.Duration) { s.Metrics.LockWait("router", d) },
		Changed:             s.Sync.Changed,
	}, s.Sync)
	s.Sync.Attach(s.Router, s.Fleet.InvalidateLocal)
	s.affinity.attach(s.Router)
	if err := s.Sync.Start(); err != nil {
		log.Error("fleet sync did not start: routing on this replica's counts only", "err", err)
	}
	s.Metrics.Watch(metrics.GaugeSource{InFlight: s.Router.InFlight, Queue: s.Router.QueueLen, Breakers: s.breakers})
	s.Live = live.New(live.Options{Replica: cfg.Replica, Local: s.Router.InFlight, Remote: s.Sync.Remote, Fleet: s.Sync.Status,
		QueueLen: s.Router.QueueLen, Store: opts.ClickHouse, Conn: opts.SyncConn,
		Stream: cfg.NATS.Stream, Partitions: cfg.NATS.Partitions, Log: log})
	sinks := usage.Sinks{s.Totals, s.Live}
	// Usage is private: a client key reads only its own, an admin every key's.
	s.analytics = analytics.NewHandler(opts.ClickHouse, func(r *http.Request) (string, bool) {
		p := auth.FromContext(r.Context())
		return p.ID, p.Admin()
	})
	if opts.Sink != nil {
		sinks = append(sinks, opts.Sink)
	}
	s.Limits = limits.New(limits.Options{Replica: cfg.Replica, Conn: opts.SyncConn, Store: opts.ClickHouse, Stream: cfg.NATS.Stream,
		Partitions: cfg.NATS.Partitions, Config: cfg.Limits, Registerer: s.Metrics.Registry, Log: log})
	s.Forward = &forward.Forwarder{Fleet: s.Fleet, Router: s.Router, Sink: sinks, Replica: cfg.Replica, MaxAttempts: cfg.Routing.MaxAttempts, CancelGrace: cfg.Routing.CancelGrace, Log: log, Observe: s.observeRequest, Limits: s.Limits,
		FirstByteTimeout: cfg.Routing.FirstByteTimeout, WriteTimeout: cfg.Routing.WriteTimeout}
	s.handler = s.routes()
	return s
}

// Handler serves every route.
func (s *Server) Handler() http.Handler { return s.handler }

// MetricsHandler serves Prometheus metrics; on the main listener it needs
// an admin key, on metrics_listen none.
func (s *Server) MetricsHandler() http.Handler {
	return promhttp.HandlerFor(s.Metrics.Registry, promhttp.HandlerOpts{})
}

// Close stops background work. Call it after the HTTP server has drained.
func (s *Server) Close() {
	s.affinity.close()
	s.Live.Close()
	s.Limits.Close()
	s.keyStore.Close()
	s.Sync.Close()
	s.Fleet.Close()
}

func (s *Server) routes() http.Handler {
	r := chi.NewRouter()
	// First, on the server's own ResponseWriter: it sets read deadlines.
	r.Use(bodyLimits(s.Config.Server, deny, bodyRefusals(s.Metrics.Registry)))
	r.Use(middleware.Recoverer)
	// The page for browsers at / and its static assets: no key needed (they
	// hold no data; the page asks for a key when the API wants one).
	r.Use(dashboard.Middleware)
	r.Use(cors(s.Config.CORS.Origins))
	r.Use(s.Keys.Middleware(auth.Policy{Access: access, QueryKey: queryKey, Deny: deny}))
	// Ollama answers unknown paths with a plain 404, wrong methods with 405.
	r.NotFound(ollamaapi.NotFound)
	r.MethodNotAllowed(ollamaapi.MethodNotAllowed)

	api := &ollamaapi.Handler{Fleet: s.Fleet, Forward: s.Forward, Log: s.log}
	api.Routes(r)
	(&openaiapi.Handler{Fleet: s.Fleet, Forward: s.Forward, Log: s.log}).Routes(r)
	(&anthropicapi.Handler{Forward: s.Forward, Log: s.log}).Routes(r)
	r.Get("/health", s.health)
	if s.Config.MetricsListen == "" {
		r.Method(http.MethodGet, "/metrics", s.MetricsHandler())
	}
	r.Get("/api/usage", s.Live.ServeUsage)
	r.Get("/api/usage-stream", s.Live.ServeStream)
	r.Get("/api/config", s.endpoints)
	r.Post("/api/cache/invalidate", s.invalidate)
	(&keystore.API{Store: s.keyStore, Config: keystore.FromConfig(s.Config.Auth.Keys), Log: s.log}).Routes(r)
	(&limitsapi.API{Source: s.Limits, Principals: s.Keys.Principals}).Routes(r)
	stats := http.NewServeMux() // analytics from ClickHouse (503 without it)
	s.analytics.Register(stats)
	r.Method(http.MethodGet, "/api/token_counts", stats)
	r.Method(http.MethodPost, "/api/stats", stats)
	r.Method(http.MethodGet, "/api/token_usage", stats)
	return r
}

// adminRoutes change the fleet or reveal all of it: model management,
// caches, configuration, keys and metrics (method "" is any method).
var adminRoutes = map[[2]string]bool{
	{http.MethodPost, "/api/pull"}: true, {http.MethodPost, "/api/push"}: true,
	{http.MethodPost, "/api/create"}: true, {http.MethodPost, "/api/copy"}: true,
	{http.MethodDelete, "/api/delete"}:             true,
	{http.MethodPost, "/api/experimental/aliases"}: true, {http.MethodDelete, "/api/experimental/aliases"}: true,
	{http.MethodPost, "/api/cache/invalidate"}: true,
	{"", "/api/config"}:                        true, {"", "/api/ps_details"}: true, {"", "/metrics"}: true, {"", "/api/keys"}: true,
}

// access is what each route needs. Public: the dashboard page, Ollama's
// "is it running" probe and /health (in detail for admins only).
// Admin: adminRoutes, blobs and key management. Everything else, inference
// on every API, listings and one's own usage, needs any valid key.
func access(r *http.Request) auth.Access {
	p := r.URL.Path
	switch {
	case p == "/" || p == "/health":
		return auth.Public
	case adminRoutes[[2]string{r.Method, p}] || adminRoutes[[2]string{"", p}],
		strings.HasPrefix(p, "/api/blobs/"), strings.HasPrefix(p, "/api/keys/"):
		return auth.Admin
	}
	return auth.Client
}

// queryKey allows ?api_key= only where a browser cannot send a header: the
// live usage stream (EventSource) and the dashboard's first load.
func queryKey(r *http.Request) bool {
	return r.Method == http.MethodGet && (r.URL.Path == "/api/usage-stream" || r.URL.Path == "/")
}

// deny refuses in the route's API format: Anthropic's error object on
// /v1/messages, OpenAI's on the rest of /v1, Ollama's elsewhere.
func deny(w http.ResponseWriter, r *http.Request, status int, msg string) {
	switch {
	case r.URL.Path == anthropicapi.Route:
		anthropicapi.WriteError(w, status, msg)
	case strings.HasPrefix(r.URL.Path, "/v1/"):
		openaiapi.WriteError(w, status, msg)
	default:
		ollamaapi.WriteError(w, status, msg)
	}
}

type backendStatus struct {
	Name           string           `json:"name"`
	URL            string           `json:"url"`
	Type           string           `json:"type"`
	MaxConcurrency int              `json:"max_concurrency"`
	Weight         int              `json:"weight"`
	Health         backend.Snapshot `json:"health"`
}

func (s *Server) backendStatuses() ([]backendStatus, int) {
	var out []backendStatus
	usable := 0
	for _, b := range s.Fleet.Backends {
		snap := b.Health.Snapshot()
		// Half-open is a backend under trial after failing: not usable
		// until a probe or request proves it.
		if snap.Healthy {
			usable++
		}
		out = append(out, backendStatus{Name: b.Name, URL: redacted(b.URL), Type: b.Dialect.Kind(), MaxConcurrency: b.MaxConcurrency, Weight: b.Weight, Health: snap})
	}
	return out, usable
}

// redacted shows a backend URL without its password.
func redacted(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "(unparseable URL)"
	}
	return u.Redacted()
}

// health is 503 when no backend is usable. Anyone learns only that, in
// one word; an admin sees each backend (URLs redacted, errors trimmed),
// the queue, fleet sync and the usage pipeline.
func (s *Server) health(w http.ResponseWriter, r *http.Request) {
	backends, usable := s.backendStatuses()
	status, code := "ok", http.StatusOK
	switch {
	case usable == 0:
		status, code = "unavailable", http.StatusServiceUnavailable
	case usable < len(backends):
		status = "degraded"
	}
	if !auth.FromContext(r.Context()).Admin() {
		writeJSON(w, code, map[string]any{"status": status})
		return
	}
	out := map[string]any{"status": status, "replica": s.Config.Replica, "backends": backends, "queue_length": s.Router.QueueLen(), "fleet_sync": s.Sync.Status(), "affinity": s.affinity.status()}
	if s.usageStatus != nil {
		out["usage_pipeline"] = s.usageStatus()
	}
	writeJSON(w, code, out)
}

// endpoints is /api/config: each backend and its state.
func (s *Server) endpoints(w http.ResponseWriter, r *http.Request) {
	backends, _ := s.backendStatuses()
	writeJSON(w, http.StatusOK, map[string]any{"endpoints": backends})
}

// invalidate drops cached model lists, for all backends or those named in
// {"backends": [...]}.
func (s *Server) invalidate(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Backends []string `json:"backends"`
	}
	if r.ContentLength != 0 {
		if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
			ollamaapi.WriteError(w, http.StatusBadRequest, err.Error())
			return
		}
	}
	for _, name := range req.Backends {
		if _, ok := s.Fleet.Backend(name); !ok {
			ollamaapi.WriteError(w, http.StatusNotFound, "no backend named "+name)
			return
		}
	}
	s.Fleet.Invalidate(req.Backends...)
	writeJSON(w, http.StatusOK, map[string]any{"invalidated": req.Backends})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v) //nolint:errcheck // the client may be gone
}

func (s *Server) observeQueue(wait time.Duration, queued bool, err error) {
	outcome := "granted"
	switch {
	case errors.Is(err, routing.ErrQueueFull):
		outcome = "full"
	case errors.Is(err, routing.ErrQueueTimeout):
		outcome = "timeout"
	case err != nil:
		outcome = "cancelled"
	case !queued:
		outcome = "immediate"
	}
	s.Metrics.QueueWait(outcome, wait)
}

func (s *Server) observeRequest(o forward.Outcome) {
	s.Metrics.Request(o.Route, o.Backend, o.Model, o.Status, o.TTFB, o.Duration, o.Attempts)
	if o.Status < 300 && o.Backend != "" {
		s.Metrics.Tokens(o.Backend, o.Model, o.Route, o.InputTokens, o.OutputTokens, o.TokensKnown)
	}
	if !s.log.Enabled(context.Background(), slog.LevelDebug) {
		return
	}
	s.log.Debug("request", "route", o.Route, "backend", o.Backend, "model", o.Model, "status", o.Status,
		"ttfb_ms", o.TTFB.Milliseconds(), "duration_ms", o.Duration.Milliseconds(), "attempts", o.Attempts)
}

func (s *Server) breakers() map[string]int {
	out := make(map[string]int, len(s.Fleet.Backends))
	for _, b := range s.Fleet.Backends {
		out[b.Name] = int(b.Health.State())
	}
	return out
}
