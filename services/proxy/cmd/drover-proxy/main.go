// Command drover-proxy is the replica clients talk to: the Ollama API (and
// OpenAI's under /v1) over a whole fleet of inference servers.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/droverhq/drover/pkg/config"
	"github.com/droverhq/drover/services/proxy/internal/server"
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
	environ := os.Environ()
	var env []string
	for _, kv := range environ {
		if !strings.HasPrefix(kv, "DROVER_CONFIG=") {
			env = append(env, kv)
		}
	}
	cfg, err := config.Load(*path, env)
	if err != nil {
		return err
	}
	log := slog.New(slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: level(cfg.LogLevel)}))
	if len(cfg.Backends) == 0 {
		log.Warn("no backends configured: set backends in the config file or DROVER_BACKENDS")
	}

	srv := server.New(cfg, log, server.Options{})
	defer srv.Close()

	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	hs := &http.Server{Handler: srv.Handler(), ReadHeaderTimeout: 10 * time.Second}
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
		return err
	}
	log.Info("stopped")
	return nil
}

func level(s string) slog.Level {
	var l slog.Level
	if err := l.UnmarshalText([]byte(s)); err != nil {
		return slog.LevelInfo
	}
	return l
}
