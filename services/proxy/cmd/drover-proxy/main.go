// Command drover-proxy is the replica clients talk to: the Ollama API (and
// OpenAI's under /v1) over a whole fleet of inference servers.
//
// With nats.url set, every request's usage is published to JetStream (or
// spooled on disk while NATS is away) and in-flight counts and cache
// invalidations are shared with the other replicas. On SIGTERM it stops
// accepting, finishes in-flight requests, publishes or spools every event,
// then exits.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	_ "net/http/pprof" // served only on debug_listen
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/droverhq/drover/pkg/chstore"
	"github.com/droverhq/drover/pkg/config"
	"github.com/droverhq/drover/pkg/natsconn"
	"github.com/droverhq/drover/pkg/usage"
	"github.com/droverhq/drover/pkg/usagepub"
	"github.com/droverhq/drover/services/proxy/internal/server"
	"github.com/droverhq/drover/services/proxy/internal/sse"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "drover-proxy:", err)
		os.Exit(1)
	}
}

func run() error {
	path := flag.String("config", os.Getenv("DROVER_CONFIG"), "YAML config file (DROVER_ env variables override it)")
	drain := flag.Duration("drain", 30*time.Second, "how long SIGTERM waits for in-flight requests")
	flag.Parse()
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "DROVER_CONFIG=") {
			env = append(env, kv)
		}
	}
	cfg, err := config.Load(*path, env)
	if err != nil {
		return err
	}
	log := slog.New(slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: level(cfg.LogLevel)}))
	if err := cfg.CheckOpenAccess(); err != nil {
		return err
	}
	if cfg.OpenAccess() {
		log.Warn("no API keys in the config file: until the key bucket holds one, anyone who can reach the listener is an admin (pull, delete, every key's usage)",
			"listen", cfg.Listen, "auth.open", cfg.Auth.Open)
	}
	if len(cfg.Backends) == 0 {
		log.Warn("no backends configured: set backends in the config file or DROVER_BACKENDS")
	}

	if cfg.DebugListen != "" {
		dl, err := net.Listen("tcp", cfg.DebugListen)
		if err != nil {
			return fmt.Errorf("debug_listen: %w", err)
		}
		log.Info("serving pprof", "addr", dl.Addr().String())
		go http.Serve(dl, http.DefaultServeMux) //nolint:errcheck // debug only; ends with the process
	}

	reg := prometheus.NewRegistry()
	opts := server.Options{Registry: reg}
	var pub *usagepub.Publisher
	var conns []*nats.Conn
	if cfg.NATS.URL != "" {
		pubConn, err := natsconn.Connect(cfg.NATS, "drover-proxy "+cfg.Replica+" usage", log)
		if err != nil {
			return err
		}
		// NoEcho: a replica's own counts and invalidations need not come back.
		syncConn, err := natsconn.Connect(cfg.NATS, "drover-proxy "+cfg.Replica+" sync", log, nats.NoEcho())
		if err != nil {
			return err
		}
		conns = append(conns, pubConn, syncConn)
		pub, err = usagepub.New(pubConn, usagepub.WithConfig(cfg.NATS, cfg.Usage), usagepub.WithRegisterer(reg), usagepub.WithLogger(log))
		if err != nil {
			return fmt.Errorf("usage publisher: %w", err)
		}
		opts.Sink, opts.SyncConn = pub, syncConn
		opts.UsageStatus = func() any { return pub.Stats() }
	} else {
		log.Warn("nats.url is not set: usage stays in this process and replicas do not share state")
	}
	if cfg.ClickHouse.Addr != "" {
		// Read-only here: fleet token totals and the dashboard's charts.
		store, err := chstore.Open(chstore.FromConfig(cfg.ClickHouse))
		if err != nil {
			return fmt.Errorf("clickhouse: %w", err)
		}
		defer store.Close()
		opts.ClickHouse = store
	}
	srv := server.New(cfg, log, opts)

	var metricsServer *http.Server // closed after the drain, so scrapes see it
	if cfg.MetricsListen != "" {
		ml, err := net.Listen("tcp", cfg.MetricsListen)
		if err != nil {
			return fmt.Errorf("metrics_listen: %w", err)
		}
		log.Info("serving /metrics without a key on its own listener", "addr", ml.Addr().String())
		mux := http.NewServeMux()
		mux.Handle("GET /metrics", srv.MetricsHandler())
		metricsServer = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
		go metricsServer.Serve(ml) //nolint:errcheck // http.ErrServerClosed once closed below
	}

	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	// The server section's bounds (docs/hostile.md): body size and read
	// time in the handler, head size and timeouts here, one SSE event's
	// size in every filter.
	sse.SetMaxEvent(cfg.Server.MaxEventBytes)
	hs := srv.HTTPServer()
	hs.RegisterOnShutdown(srv.Live.Close) // live usage streams never go idle: end them so draining can finish
	log.Info("drover-proxy listening", "addr", ln.Addr().String(), "backends", len(cfg.Backends), "replica", cfg.Replica)

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	errc := make(chan error, 1)
	go func() { errc <- hs.Serve(ln) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	log.Info("draining", "timeout", drain.String())
	sctx, cancel := context.WithTimeout(context.Background(), *drain)
	defer cancel()
	if err := hs.Shutdown(sctx); err != nil && !errors.Is(err, context.DeadlineExceeded) {
		log.Error("shutdown", "err", err)
	}
	srv.Close()
	if metricsServer != nil {
		metricsServer.Close() //nolint:errcheck // nothing left to scrape
	}
	if pub != nil {
		// Every event is published or spooled before we exit.
		pctx, pcancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer pcancel()
		if err := pub.Close(pctx); err != nil {
			log.Error("closing usage publisher", "err", err)
		}
		log.Info("usage publisher closed", "stats", pub.Stats())
	}
	for _, nc := range conns {
		nc.Close()
	}
	log.Info("stopped")
	return nil
}

var _ usage.Sink = (*usagepub.Publisher)(nil)

func level(s string) slog.Level {
	var l slog.Level
	if err := l.UnmarshalText([]byte(s)); err != nil {
		return slog.LevelInfo
	}
	return l
}
