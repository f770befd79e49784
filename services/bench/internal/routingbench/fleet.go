package routingbench

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/droverhq/drover/services/bench/internal/launch"
)

// Bins are the binaries a fleet runs.
type Bins struct {
	Proxy   string // drover-proxy
	Backend string // fake-ollama
	NATS    string // nats-server; needed for more than one replica
}

// Backends describes the fake Ollama servers.
type Backends struct {
	Count    int
	Parallel int // slots per model, and routing.max_concurrency
	// TokenCost is the prompt cost per uncached token; CacheTokens bounds
	// each slot's cache.
	TokenCost   time.Duration
	CacheTokens int
	ChunkDelay  time.Duration // decode time per output token
}

// Setup is one routing configuration under test.
type Setup struct {
	Name     string `json:"name"`
	Strategy string `json:"strategy"` // routing.strategy
	Replicas int    `json:"replicas"`
	// Share is routing.affinity.share (meaningful for prefix with replicas).
	Share bool `json:"share"`
	// MaxEntries is routing.affinity.max_entries; 0 keeps the default.
	MaxEntries int `json:"max_entries,omitempty"`
	// NoKeys writes neither routing.strategy nor routing.affinity, for a
	// build before issue 15 (whose least_loaded is the only strategy).
	NoKeys bool `json:"no_keys,omitempty"`
}

// Fleet is a started Setup: NATS (more than one replica), backends, replicas.
type Fleet struct {
	Replicas []*launch.Process
	Backends []*launch.Process
	nats     *launch.NATS
}

const startTimeout = time.Minute

// StartFleet starts every process of setup, logging under logDir/setup.Name.
func StartFleet(ctx context.Context, bins Bins, be Backends, setup Setup, logDir string) (_ *Fleet, err error) {
	dir := filepath.Join(logDir, setup.Name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("creating %s: %w", dir, err)
	}
	ctx, cancel := context.WithTimeout(ctx, startTimeout)
	defer cancel()
	f := &Fleet{}
	defer func() {
		if err != nil {
			f.Stop()
		}
	}()
	natsURL := ""
	if setup.Replicas > 1 {
		if bins.NATS == "" {
			return nil, errors.New("more than one replica needs -nats-bin")
		}
		if f.nats, err = launch.StartNATSProcess(ctx, bins.NATS, dir); err != nil {
			return nil, err
		}
		natsURL = f.nats.URL()
		if err := launch.EnsureUsageStream(ctx, natsURL); err != nil {
			return nil, err
		}
	}
	var urls []string
	for i := range be.Count {
		port, err := launch.FreePort()
		if err != nil {
			return nil, err
		}
		addr := "127.0.0.1:" + strconv.Itoa(port)
		args := []string{"-addr", addr, "-models", "tiny", "-loaded", "tiny",
			"-parallel", strconv.Itoa(be.Parallel), "-prompt-token-cost", be.TokenCost.String(),
			"-cache-tokens", strconv.Itoa(be.CacheTokens), "-chunk-delay", be.ChunkDelay.String()}
		p, err := launch.Start(ctx, fmt.Sprintf("fake-ollama-%d", i+1), bins.Backend, args, "http://"+addr, "/api/version", dir)
		if err != nil {
			return nil, err
		}
		f.Backends = append(f.Backends, p)
		urls = append(urls, p.URL)
	}
	for i := range setup.Replicas {
		name := fmt.Sprintf("r%d", i+1)
		p, err := launch.StartDroverConfig(ctx, "drover-proxy-"+name, bins.Proxy, dir, func(port int) string {
			return ReplicaConfig(setup, be.Parallel, name, port, urls, natsURL, dir)
		})
		if err != nil {
			return nil, err
		}
		f.Replicas = append(f.Replicas, p)
	}
	return f, nil
}

// ReplicaConfig is replica name's config file.
func ReplicaConfig(setup Setup, maxConcurrency int, name string, port int, backends []string, natsURL, dir string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "listen: 127.0.0.1:%d\nreplica: %s\nlog_level: warn\nbackends:\n", port, name)
	for i, u := range backends {
		fmt.Fprintf(&b, "  - name: fake%d\n    url: %s\n", i+1, u)
	}
	fmt.Fprintf(&b, "routing:\n  max_concurrency: %d\n  queue:\n    max_length: 4096\n    max_wait: 60s\n", maxConcurrency)
	if !setup.NoKeys {
		fmt.Fprintf(&b, "  strategy: %s\n  affinity:\n    share: %t\n", setup.Strategy, setup.Share)
		if setup.MaxEntries > 0 {
			fmt.Fprintf(&b, "    max_entries: %d\n", setup.MaxEntries)
		}
	}
	if natsURL != "" {
		fmt.Fprintf(&b, "nats:\n  url: %s\nusage:\n  spool_dir: %s\n", natsURL, filepath.Join(dir, "spool-"+name))
	}
	return b.String()
}

// Stop stops the replicas, then the backends and NATS.
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

// Scraped is what the replicas' /metrics say, summed over replicas.
type Scraped struct {
	// BackendRequests counts /api/chat requests per backend.
	BackendRequests map[string]int64
	// Picks counts drover_affinity_picks_total by outcome (hit, miss, override).
	Picks map[string]int64
	// Slotted counts drover_affinity_slotted_total by reason, and by
	// reason + "/queue" or "/warm" for those that waited.
	Slotted map[string]int64
	// ShareMessages and ShareBytes are drover.affinity messages sent.
	ShareMessages, ShareBytes int64
}

// Scrape reads every replica's /metrics.
func (f *Fleet) Scrape(ctx context.Context, client *http.Client) (Scraped, error) {
	out := Scraped{BackendRequests: map[string]int64{}, Picks: map[string]int64{}, Slotted: map[string]int64{}}
	for _, p := range f.Replicas {
		if err := scrape(ctx, client, p.URL+"/metrics", &out); err != nil {
			return out, err
		}
	}
	return out, nil
}

func scrape(ctx context.Context, client *http.Client, url string, into *Scraped) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := client.Do(req)
	if err != nil {
		return fmt.Errorf("scraping %s: %w", url, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("scraping %s: status %d", url, resp.StatusCode)
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		into.add(sc.Text())
	}
	return sc.Err()
}

// add counts one sample line of the exposition format.
func (s *Scraped) add(line string) {
	name, labels, ok := strings.Cut(line, "{")
	k := strings.LastIndexByte(line, ' ')
	if !ok || k < 0 {
		return
	}
	v, err := strconv.ParseFloat(line[k+1:], 64)
	if err != nil {
		return
	}
	n := int64(v)
	switch name {
	case "drover_requests_total":
		if strings.Contains(labels, `route="/api/chat"`) {
			s.BackendRequests[label(labels, "backend")] += n
		}
	case "drover_affinity_picks_total":
		s.Picks[label(labels, "outcome")] += n
	case "drover_affinity_slotted_total":
		if s.Slotted != nil {
			r := label(labels, "reason")
			s.Slotted[r] += n
			if w := label(labels, "wait"); w != "" && w != "none" {
				s.Slotted[r+"/"+w] += n
			}
		}
	case "drover_affinity_share_messages_total":
		if label(labels, "direction") == "sent" {
			s.ShareMessages += n
		}
	case "drover_affinity_share_bytes_total":
		if label(labels, "direction") == "sent" {
			s.ShareBytes += n
		}
	}
}

// label is name's value in a label set such as a="x",b="y"}.
func label(labels, name string) string {
	i := strings.Index(labels, name+`="`)
	if i < 0 {
		return ""
	}
	rest := labels[i+len(name)+2:]
	j := strings.IndexByte(rest, '"')
	if j < 0 {
		return ""
	}
	return rest[:j]
}
