// Command drover-aggregator consumes the usage event stream from JetStream
// and writes it into ClickHouse exactly once (see docs/pipeline.md).
//
//	drover-aggregator -config drover.yaml
//
// It applies the ClickHouse migrations at start-up, serves /metrics and
// /health on aggregator.metrics_listen, and on SIGTERM or SIGINT flushes what
// it holds, releases its partitions and exits.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/droverhq/drover/pkg/chstore"
	"github.com/droverhq/drover/pkg/config"
	"github.com/droverhq/drover/pkg/natsconn"
	"github.com/droverhq/drover/pkg/usage"
	"github.com/droverhq/drover/services/aggregator/internal/ingest"
	"github.com/droverhq/drover/services/aggregator/internal/lease"
	"github.com/droverhq/drover/services/aggregator/internal/metrics"
)

const (
	// startRetryMin and startRetryMax bound the backoff while waiting for
	// NATS and ClickHouse at start-up.
	startRetryMin = 200 * time.Millisecond
	startRetryMax = 10 * time.Second
	// httpTimeout bounds reading a metrics request's headers and shutting
	// the metrics listener down.
	httpTimeout = 5 * time.Second
)

func main() {
	configPath := flag.String("config", "", "YAML config file (optional; DROVER_ variables override it)")
	flag.Parse()
	cfg, err := config.Load(*configPath, os.Environ())
	if err != nil {
		fmt.Fprintln(os.Stderr, "drover-aggregator:", err)
		os.Exit(2)
	}
	log := slog.New(slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: logLevel(cfg.LogLevel)}))
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if err := run(ctx, cfg, log); err != nil {
		log.Error("drover-aggregator stopped", "err", err)
		os.Exit(1)
	}
	log.Info("drover-aggregator stopped")
}

func run(ctx context.Context, cfg *config.Config, log *slog.Logger) error {
	if cfg.NATS.URL == "" {
		return errors.New("nats.url is required")
	}
	if cfg.ClickHouse.Addr == "" {
		return errors.New("clickhouse.addr is required")
	}
	m := metrics.New(true)

	nc, err := natsconn.Connect(cfg.NATS, "drover-aggregator "+cfg.Aggregator.Instance, log)
	if err != nil {
		return fmt.Errorf("connecting to NATS: %w", err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}

	store, err := chstore.Open(chstore.FromConfig(cfg.ClickHouse))
	if err != nil {
		return err
	}
	defer store.Close()

	var agg atomic.Pointer[ingest.Aggregator] // set once running; read by /health
	srv := &http.Server{Addr: cfg.Aggregator.MetricsListen, Handler: routes(m, func() error {
		if !nc.IsConnected() {
			return errors.New("nats: not connected")
		}
		a := agg.Load()
		if a == nil {
			return errors.New("starting")
		}
		return a.Healthy()
	}), ReadHeaderTimeout: httpTimeout}
	go func() {
		if err := srv.ListenAndServe(); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("metrics listener", "err", err)
		}
	}()
	defer func() {
		sctx, cancel := context.WithTimeout(context.Background(), httpTimeout)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}()

	// Both wait for their server: an aggregator may start before NATS or
	// ClickHouse does.
	if !retry(ctx, log, "migrating ClickHouse", func() error {
		applied, err := store.Migrate(ctx)
		if len(applied) > 0 {
			log.Info("applied ClickHouse migrations", "migrations", applied)
		}
		return err
	}) {
		return nil
	}
	if !retry(ctx, log, "ensuring the usage stream", func() error {
		_, err := usage.EnsureStream(ctx, js, usage.StreamConfig{
			Name: cfg.NATS.Stream, MaxAge: cfg.NATS.MaxAge, MaxBytes: cfg.NATS.MaxBytes, DuplicateWindow: cfg.NATS.DuplicateWindow,
			Replicas: cfg.NATS.Replicas,
		})
		return err
	}) {
		return nil
	}
	var leases *lease.Table
	if !retry(ctx, log, "opening the lease bucket", func() (err error) {
		leases, err = lease.Open(ctx, js, cfg.Aggregator.LeaseBucket, cfg.Aggregator.Instance, cfg.Aggregator.LeaseTTL, cfg.NATS.Replicas)
		return err
	}) {
		return nil
	}

	a, err := ingest.New(ingest.Options{
		JS: js, Conn: nc, Store: store, Leases: leases, Metrics: m, Logger: log,
		Stream: cfg.NATS.Stream, Partitions: cfg.NATS.Partitions,
		BatchSize: cfg.Aggregator.BatchSize, FlushInterval: cfg.Aggregator.FlushInterval,
		FetchBatch: cfg.Aggregator.FetchBatch, LeaseTTL: cfg.Aggregator.LeaseTTL,
		DeadLetterSubject: cfg.Aggregator.DeadLetterSubject, RetryMax: cfg.Aggregator.RetryMax,
		ShutdownTimeout: cfg.Aggregator.ShutdownTimeout,
	})
	if err != nil {
		return err
	}
	agg.Store(a)
	log.Info("drover-aggregator running", "instance", cfg.Aggregator.Instance, "partitions", cfg.NATS.Partitions,
		"stream", cfg.NATS.Stream, "clickhouse", cfg.ClickHouse.Addr, "metrics", cfg.Aggregator.MetricsListen)
	return a.Run(ctx)
}

func routes(m *metrics.Metrics, healthy func() error) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", m.Handler())
	mux.HandleFunc("GET /health", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		if err := healthy(); err != nil {
			w.WriteHeader(http.StatusServiceUnavailable)
			fmt.Fprintf(w, "{\"status\":\"unhealthy\",\"error\":%q}\n", err.Error())
			return
		}
		fmt.Fprintln(w, `{"status":"ok"}`)
	})
	return mux
}

func retry(ctx context.Context, log *slog.Logger, what string, f func() error) bool {
	backoff := startRetryMin
	for {
		err := f()
		if err == nil {
			return true
		}
		log.Warn(what+" failed; retrying", "retry_in", backoff, "err", err)
		select {
		case <-time.After(backoff):
		case <-ctx.Done():
			return false
		}
		backoff = min(backoff*2, startRetryMax)
	}
}

func logLevel(s string) slog.Level {
	switch strings.ToLower(s) {
	case "debug":
		return slog.LevelDebug
	case "warn":
		return slog.LevelWarn
	case "error":
		return slog.LevelError
	}
	return slog.LevelInfo
}
