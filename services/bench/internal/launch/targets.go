package launch

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
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

// StartDrover writes a config to dir and starts drover-proxy with it.
func StartDrover(ctx context.Context, bin, backendURL, dir string) (*Process, error) {
	port, err := FreePort()
	if err != nil {
		return nil, err
	}
	cfg := filepath.Join(dir, "drover.yaml")
	if err := os.WriteFile(cfg, []byte(DroverConfig(port, backendURL)), 0o644); err != nil {
		return nil, fmt.Errorf("writing drover config: %w", err)
	}
	url := "http://127.0.0.1:" + strconv.Itoa(port)
	return Start(ctx, "drover-proxy", bin, []string{"-config", cfg}, url, "/api/version", dir)
}
