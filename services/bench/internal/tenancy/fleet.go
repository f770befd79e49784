package tenancy

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/droverhq/drover/services/bench/internal/launch"
)

// Bins are the binaries a Fleet runs.
type Bins struct {
	Proxy   string // drover-proxy
	Backend string // fake-ollama
	NATS    string // nats-server
}

// Key is one API key of the run, written into every replica's config file.
type Key struct {
	ID, Secret string
	Class      string // interactive or batch; "" is the default (interactive)
	Weight     int    // 0 is the default (1)
	// TokensPerDay is the key's day budget; 0 is unlimited.
	TokensPerDay int64
}

// FleetSpec is what one scenario runs: Replicas drover-proxy processes
// sharing one nats-server (JetStream, no authentication, loopback only),
// in front of Backends fake Ollama servers.
type FleetSpec struct {
	Name     string // a directory under the log dir
	Replicas int
	Backends int
	// BackendArgs are extra fake-ollama flags (-chunk-delay, -latency).
	BackendArgs []string
	// Cap is routing.max_concurrency: requests in flight per backend and
	// model, for the whole fleet.
	Cap       int
	MaxPerKey int    // routing.queue.max_per_key; 0 keeps the default
	Headroom  int    // routing.queue.interactive_headroom; negative keeps the default
	Admission string // limits.admission; "" keeps the default (reserve)
	Keys      []Key
}

// Fleet is a started FleetSpec. Stop ends every process.
type Fleet struct {
	Replicas []*launch.Process
	Backends []*launch.Process
	nats     *launch.NATS
	dir      string
}

// startTimeout bounds starting a whole fleet.
const startTimeout = time.Minute

// StartFleet starts nats-server, the backends and the replicas, in that
// order, each waited on until it answers.
func StartFleet(ctx context.Context, bins Bins, spec FleetSpec, logDir string) (_ *Fleet, err error) {
	dir := filepath.Join(logDir, spec.Name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("creating %s: %w", dir, err)
	}
	ctx, cancel := context.WithTimeout(ctx, startTimeout)
	defer cancel()
	f := &Fleet{dir: dir}
	defer func() {
		if err != nil {
			f.Stop()
		}
	}()
	if f.nats, err = launch.StartNATSProcess(ctx, bins.NATS, dir); err != nil {
		return nil, err
	}
	if err := launch.EnsureUsageStream(ctx, f.nats.URL()); err != nil {
		return nil, err
	}
	var urls []string
	for i := range spec.Backends {
		port, err := launch.FreePort()
		if err != nil {
			return nil, err
		}
		addr := "127.0.0.1:" + strconv.Itoa(port)
		args := append([]string{"-addr", addr, "-models", "tiny"}, spec.BackendArgs...)
		p, err := launch.Start(ctx, fmt.Sprintf("fake-ollama-%d", i+1), bins.Backend, args, "http://"+addr, "/api/version", dir)
		if err != nil {
			return nil, err
		}
		f.Backends = append(f.Backends, p)
		urls = append(urls, p.URL)
	}
	for i := range spec.Replicas {
		name := fmt.Sprintf("r%d", i+1)
		p, err := launch.StartDroverConfig(ctx, "drover-proxy-"+name, bins.Proxy, dir, func(port int) string {
			return ReplicaConfig(spec, name, port, urls, f.nats.URL(), dir)
		})
		if err != nil {
			return nil, err
		}
		f.Replicas = append(f.Replicas, p)
	}
	return f, nil
}

// URL is replica i's base URL, i taken modulo the number of replicas, so
// that request i goes round robin over the fleet.
func (f *Fleet) URL(i int) string { return f.Replicas[i%len(f.Replicas)].URL }

// Stop stops the replicas first (they publish on the way out), then the
// backends and NATS.
func (f *Fleet) Stop() error {
	var errs []error
	for _, p := range f.Replicas {
		errs = append(errs, p.Stop())
	}
	for _, p := range f.Backends {
		errs = append(errs, p.Stop())
	}
	if f.nats != nil {
		errs = append(errs, f.nats.Stop())
	}
	return errors.Join(errs...)
}

// ReplicaConfig is replica name's config file.
func ReplicaConfig(spec FleetSpec, name string, port int, backends []string, natsURL, dir string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "listen: 127.0.0.1:%d\nreplica: %s\nlog_level: warn\nbackends:\n", port, name)
	for i, u := range backends {
		fmt.Fprintf(&b, "  - name: fake%d\n    url: %s\n", i+1, u)
	}
	fmt.Fprintf(&b, "routing:\n  max_concurrency: %d\n  queue:\n    max_length: 4096\n    max_wait: 60s\n", spec.Cap)
	if spec.MaxPerKey > 0 {
		fmt.Fprintf(&b, "    max_per_key: %d\n", spec.MaxPerKey)
	}
	if spec.Headroom >= 0 {
		fmt.Fprintf(&b, "    interactive_headroom: %d\n", spec.Headroom)
	}
	if spec.Admission != "" {
		fmt.Fprintf(&b, "limits:\n  admission: %s\n", spec.Admission)
	}
	fmt.Fprintf(&b, "auth:\n  state_file: %s\n  keys:\n", filepath.Join(dir, "keys-"+name+".json"))
	for _, k := range spec.Keys {
		fmt.Fprintf(&b, "    - id: %s\n      key: %q\n      role: client\n", k.ID, k.Secret)
		if k.Class != "" {
			fmt.Fprintf(&b, "      class: %s\n", k.Class)
		}
		if k.Weight > 0 {
			fmt.Fprintf(&b, "      weight: %d\n", k.Weight)
		}
		if k.TokensPerDay > 0 {
			fmt.Fprintf(&b, "      limits:\n        tokens_per_day: %d\n", k.TokensPerDay)
		}
	}
	fmt.Fprintf(&b, "nats:\n  url: %s\nusage:\n  spool_dir: %s\n", natsURL, filepath.Join(dir, "spool-"+name))
	return b.String()
}

// settle waits d, or less if ctx ends: time for replicas to hear of each
// other (fleet sync heartbeats every second) before load starts.
func settle(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

// warmTimeout bounds a warm-up request: the fleet is idle then, so a
// request that takes longer is stuck.
const warmTimeout = 10 * time.Second

// Warm sends one request of each key through each replica, so that the
// measured phases start with model lists cached and connections open. It
// fails on any reply but a complete 200.
func (f *Fleet) Warm(ctx context.Context, c Client, keys []Key, req Request) error {
	for i := range f.Replicas {
		for _, k := range keys {
			rctx, cancel := context.WithTimeout(ctx, warmTimeout)
			r := c.Do(rctx, f.URL(i), k.ID, k.Secret, req)
			cancel()
			if !r.OK() {
				return fmt.Errorf("warming replica %d with key %s: status %d %s", i+1, k.ID, r.Status, r.Err)
			}
		}
	}
	return nil
}
