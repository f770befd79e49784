package tenancy

import (
	"context"
	"math"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/droverhq/drover/pkg/config"
	"github.com/droverhq/drover/testkit/ollamatest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestJain(t *testing.T) {
	for _, c := range []struct {
		xs   []float64
		want float64
	}{
		{[]float64{5, 5}, 1},
		{[]float64{10, 0}, 0.5},
		{[]float64{10, 1}, 121.0 / 202},
		{[]float64{3, 3, 3, 3}, 1},
		{nil, 0},
		{[]float64{0, 0}, 0},
	} {
		if got := Jain(c.xs); math.Abs(got-c.want) > 1e-9 {
			t.Errorf("Jain(%v) = %v, want %v", c.xs, got, c.want)
		}
	}
}

func TestPercentile(t *testing.T) {
	var ds []time.Duration
	for i := 100; i >= 1; i-- {
		ds = append(ds, time.Duration(i)*time.Millisecond)
	}
	for q, want := range map[float64]time.Duration{0.5: 50 * time.Millisecond, 0.99: 99 * time.Millisecond, 1: 100 * time.Millisecond, 0: time.Millisecond} {
		if got := Percentile(ds, q); got != want {
			t.Errorf("Percentile(%v) = %v, want %v", q, got, want)
		}
	}
	if ds[0] != 100*time.Millisecond {
		t.Error("Percentile sorted its input in place")
	}
	if Percentile(nil, 0.99) != 0 {
		t.Error("Percentile of nothing is not 0")
	}
}

func TestShareError(t *testing.T) {
	got := ShareError([]float64{75, 25}, []float64{3, 1})
	if got[0] > 1e-9 || got[1] > 1e-9 {
		t.Errorf("exact shares: %v", got)
	}
	got = ShareError([]float64{80, 20}, []float64{3, 1})
	if math.Abs(got[0]-(0.8/0.75-1)) > 1e-9 || math.Abs(got[1]-0.2) > 1e-9 {
		t.Errorf("80:20 against 3:1: %v", got)
	}
}

// TestBacklogWindows: key b has a gap with nothing outstanding in the
// second window, so only the first and third count.
func TestBacklogWindows(t *testing.T) {
	t0 := time.Date(2026, 12, 6, 7, 0, 0, 0, time.UTC)
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	res := func(key string, from, to int) Result {
		return Result{Key: key, Start: at(from), Total: at(to).Sub(at(from)), Status: http.StatusOK}
	}
	rs := []Result{
		// a: one request outstanding throughout, back to back.
		res("a", 0, 500), res("a", 500, 1000), res("a", 1000, 1500), res("a", 1500, 2000), res("a", 2000, 2500), res("a", 2500, 3100),
		// b: outstanding in [0, 1000) and [2000, 3100), not in [1200, 2000).
		res("b", 0, 400), res("b", 400, 1000), res("b", 1000, 1200), res("b", 2000, 3100),
		// a long one of a's that overlaps all, so a never drops to 0 at a boundary.
		res("a", 0, 3100),
	}
	wins := BacklogWindows(rs, []string{"a", "b"}, 1, at(0), at(3000), time.Second)
	if len(wins) != 2 {
		t.Fatalf("windows %+v, want 2", wins)
	}
	if !wins[0].Start.Equal(at(0)) || !wins[1].Start.Equal(at(2000)) {
		t.Fatalf("window starts %v, %v", wins[0].Start, wins[1].Start)
	}
	if wins[0].Counts["a"] != 1 || wins[0].Counts["b"] != 1 {
		t.Errorf("first window counts %v, want a:1 (ended at 500; 1000 is the next window's) b:1", wins[0].Counts)
	}
	if wins[1].Counts["a"] != 2 || wins[1].Counts["b"] != 0 {
		t.Errorf("third window counts %v, want a:2 b:0", wins[1].Counts)
	}
}

// TestReplicaConfigLoads: the config the fleet writes is one drover-proxy
// accepts, with the keys' limits, classes and weights where the proxy reads
// them.
func TestReplicaConfigLoads(t *testing.T) {
	dir := t.TempDir()
	spec := FleetSpec{
		Replicas: 3, Cap: 2, MaxPerKey: 32, Admission: "count",
		Keys: []Key{
			{ID: "budget", Secret: "bench-secret-1", TokensPerDay: 100000},
			{ID: "batch", Secret: "bench-secret-2", Class: "batch", Weight: 3},
		},
	}
	path := filepath.Join(dir, "r2.yaml")
	if err := os.WriteFile(path, []byte(ReplicaConfig(spec, "r2", 12345, []string{"http://127.0.0.1:1", "http://127.0.0.1:2"}, "nats://127.0.0.1:4222", dir)), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Replica != "r2" || len(cfg.Backends) != 2 || cfg.Routing.MaxConcurrency != 2 || cfg.Routing.Queue.MaxPerKey != 32 {
		t.Errorf("replica %q backends %d routing %+v", cfg.Replica, len(cfg.Backends), cfg.Routing)
	}
	if cfg.Limits.Admission != "count" || cfg.NATS.URL != "nats://127.0.0.1:4222" {
		t.Errorf("limits %+v nats %q", cfg.Limits, cfg.NATS.URL)
	}
	if len(cfg.Auth.Keys) != 2 {
		t.Fatalf("keys %d", len(cfg.Auth.Keys))
	}
	k0, k1 := cfg.Auth.Keys[0], cfg.Auth.Keys[1]
	if k0.Limits.TokensPerDay != 100000 || k0.Class != "interactive" || k0.Weight != 1 {
		t.Errorf("budget key %+v", k0)
	}
	if k1.Class != "batch" || k1.Weight != 3 || !k1.Limits.IsZero() {
		t.Errorf("batch key %+v", k1)
	}
}

// TestRequestTokens: a Request costs, at the fake backend, exactly the
// tokens the scenarios count on, and the client reads them back.
func TestRequestTokens(t *testing.T) {
	s := ollamatest.New(ollamatest.Config{Models: []ollamatest.Model{{Name: "tiny"}}})
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	c := Client{HTTP: &http.Client{Timeout: 10 * time.Second}}
	defer c.HTTP.CloseIdleConnections()
	req := Request{Model: "tiny", Words: 496, Output: 500}
	r := c.Do(context.Background(), s.URL(), "k", "secret", req)
	if !r.OK() {
		t.Fatalf("result %+v", r)
	}
	if r.Prompt+r.Output != req.Tokens() || req.Tokens() != 1000 {
		t.Errorf("prompt %d + output %d, Tokens() %d, want 1000", r.Prompt, r.Output, req.Tokens())
	}
	if r.Headers <= 0 || r.Total < r.Headers {
		t.Errorf("headers %v total %v", r.Headers, r.Total)
	}
}

// TestLoops: the closed loop stops a worker on its stop condition, and the
// open loop sends about rate × duration requests and waits for them.
func TestLoops(t *testing.T) {
	var out results
	ctx := context.Background()
	closedLoop(ctx, 4, time.Minute, func(ctx context.Context, i int) Result {
		st := http.StatusOK
		if i >= 10 {
			st = http.StatusTooManyRequests
		}
		return Result{Key: "k", Start: time.Now(), Status: st}
	}, func(r Result) bool { return r.Status == http.StatusTooManyRequests }, &out)
	refused := 0
	for _, r := range out.all() {
		if r.Status == http.StatusTooManyRequests {
			refused++
		}
	}
	if len(out.all()) != 14 || refused != 4 {
		t.Errorf("closed loop: %d results, %d refused; want 14 and 4 (each of 4 workers stops at its first refusal)", len(out.all()), refused)
	}
	var open results
	openLoop(ctx, ctx, 200, 500*time.Millisecond, 7, func(ctx context.Context, i int) Result {
		return Result{Key: "k", Status: http.StatusOK}
	}, &open)
	if n := len(open.all()); n < 50 || n > 200 {
		t.Errorf("open loop at 200/s for 0.5 s sent %d", n)
	}
}

// TestPromptEstimate: the proxy estimates a prompt as bytes / 4; the
// prompts here are about that many tokens at the fake backend, as English
// text is at a real tokenizer, so the estimate neither starves nor inflates
// the overshoot scenario.
func TestPromptEstimate(t *testing.T) {
	r := Request{Model: "tiny", Words: 496, Output: 500}
	est := (len(r.body()) + 3) / 4
	if est < r.Words || est > r.Words*11/10 {
		t.Errorf("estimate %d tokens for a %d-word prompt", est, r.Words)
	}
}

// The neighbour scenario's output spread draws each request's length within
// the bounds, the same way in every run, and leaves it alone at 0.
func TestOutputSpread(t *testing.T) {
	s := SaturationSpec{Req: Request{Output: 20}}
	if got := s.spread("a", 7); got.Output != 20 {
		t.Fatalf("no spread: output %d, want 20", got.Output)
	}
	s.OutputSpread = 0.5
	lo, hi := 20, 20
	for i := range 2000 {
		n := s.spread("a", i).Output
		if n != s.spread("a", i).Output {
			t.Fatalf("request %d drew two lengths", i)
		}
		if n < 10 || n > 30 {
			t.Fatalf("request %d: output %d outside 10..30", i, n)
		}
		lo, hi = min(lo, n), max(hi, n)
	}
	if lo > 11 || hi < 29 {
		t.Fatalf("2000 draws spanned only %d..%d of 10..30", lo, hi)
	}
}
