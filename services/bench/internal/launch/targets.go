package launch

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/droverhq/drover/pkg/config"
	"github.com/droverhq/drover/pkg/usage"
)

// StartFakeOllama starts the fake Ollama binary on a free port with the
// model and chunk count the benchmark's workloads expect.
func StartFakeOllama(ctx context.Context, bin, logDir string) (*Process, error) {
	port, err := FreePort()
	if err != nil {
		return nil, err
	}
	addr := "127.0.0.1:" + strconv.Itoa(port)
	args := []string{"-addr", addr, "-models", "tiny", "-chunks", "20"}
	return Start(ctx, "fake-ollama", bin, args, "http://"+addr, "/api/version", logDir)
}

// DroverConfig is the drover-proxy configuration the benchmark uses: one
// backend, and limits high enough that the router never queues or sheds
// under the benchmark's load.
func DroverConfig(port int, backendURL string) string {
	return fmt.Sprintf(`listen: 127.0.0.1:%d
backends:
  - name: fake
    url: %s
routing:
  max_concurrency: 1024
  queue:
    max_length: 4096
    max_wait: 30s
`, port, backendURL)
}

// DroverNATSConfig is DroverConfig plus usage publishing: every finished
// request becomes an event published to JetStream at natsURL, spooled in
// spoolDir while NATS is away.
func DroverNATSConfig(port int, backendURL, natsURL, spoolDir string) string {
	return DroverConfig(port, backendURL) + fmt.Sprintf(`nats:
  url: %s
usage:
  spool_dir: %s
`, natsURL, spoolDir)
}

// StartDrover writes a config to dir and starts drover-proxy with it.
func StartDrover(ctx context.Context, bin, backendURL, dir string) (*Process, error) {
	return startDrover(ctx, "drover-proxy", bin, dir, func(port int) string { return DroverConfig(port, backendURL) })
}

// StartBaseline starts an earlier build of drover-proxy configured as
// StartDrover's (logs and config as drover-proxy-baseline), to compare a
// change with what came before it in one run.
func StartBaseline(ctx context.Context, bin, backendURL, dir string) (*Process, error) {
	return startDrover(ctx, "drover-proxy-baseline", bin, dir, func(port int) string { return DroverConfig(port, backendURL) })
}

// StartDroverNATS starts a second drover-proxy, configured as StartDrover's
// but publishing usage to natsURL (logs and config as drover-proxy-nats).
// It first creates the usage stream, as the aggregator (which the target
// does not run) would: a proxy only waits for it.
func StartDroverNATS(ctx context.Context, bin, backendURL, natsURL, dir string) (*Process, error) {
	if err := EnsureUsageStream(ctx, natsURL); err != nil {
		return nil, err
	}
	spool := filepath.Join(dir, "spool")
	return startDrover(ctx, "drover-proxy-nats", bin, dir, func(port int) string {
		return DroverNATSConfig(port, backendURL, natsURL, spool)
	})
}

// StartDroverConfig starts drover-proxy as name with the config config
// returns for its port (written to dir/name.yaml), for benchmarks that need
// their own keys and limits.
// It is ready when GET /health answers 200, which it does without a key.
func StartDroverConfig(ctx context.Context, name, bin, dir string, config func(port int) string) (*Process, error) {
	return startDroverAt(ctx, name, bin, dir, "/health", config)
}

func startDrover(ctx context.Context, name, bin, dir string, config func(port int) string) (*Process, error) {
	return startDroverAt(ctx, name, bin, dir, "/api/version", config)
}

func startDroverAt(ctx context.Context, name, bin, dir, readyPath string, config func(port int) string) (*Process, error) {
	port, err := FreePort()
	if err != nil {
		return nil, err
	}
	cfg := filepath.Join(dir, name+".yaml")
	if name == "drover-proxy" {
		cfg = filepath.Join(dir, "drover.yaml")
	}
	if err := os.WriteFile(cfg, []byte(config(port)), 0o644); err != nil {
		return nil, fmt.Errorf("writing %s config: %w", name, err)
	}
	url := "http://127.0.0.1:" + strconv.Itoa(port)
	return Start(ctx, name, bin, []string{"-config", cfg}, url, readyPath, dir)
}

// EnsureUsageStream creates the usage stream with the config file's
// defaults, as the aggregator would (proxies only wait for it).
func EnsureUsageStream(ctx context.Context, natsURL string) error {
	nc, err := nats.Connect(natsURL)
	if err != nil {
		return fmt.Errorf("creating the usage stream: %w", err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return fmt.Errorf("creating the usage stream: %w", err)
	}
	d := config.DefaultNATS()
	_, err = usage.EnsureStream(ctx, js, usage.StreamConfig{Name: d.Stream, MaxAge: d.MaxAge, MaxBytes: d.MaxBytes, DuplicateWindow: d.DuplicateWindow})
	return err
}
