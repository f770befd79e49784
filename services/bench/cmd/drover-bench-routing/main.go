// Command drover-bench-routing compares Drover's routing strategies on
// fake Ollama backends that cache prompt prefixes per slot (issue 15):
// least_loaded, round_robin, session and prefix, with one drover-proxy
// replica and with three sharing one nats-server (prefix with and without
// sharing its index), under a ramp of Poisson arrivals of conversation
// groups with long shared system prompts. It prints Markdown tables and
// optionally writes JSON and an SVG plot; docs/routing-bench.md has the
// method and the figures.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/droverhq/drover/services/bench/internal/keepalive"
	"github.com/droverhq/drover/services/bench/internal/routingbench"
)

const defaultSetups = "1:least_loaded,1:round_robin,1:session,1:prefix,3:least_loaded,3:prefix,3:prefix-noshare"

type options struct {
	from          string // re-render a -json file instead of running
	spec          routingbench.RunSpec
	setups        []routingbench.Setup
	jsonPath, svg string
	timeout       time.Duration
	// sweep holds the group counts of -sweep-groups (nil: one run).
	sweep []int
}

func parseFlags(args []string) (options, error) {
	var o options
	fs := flag.NewFlagSet("drover-bench-routing", flag.ContinueOnError)
	b, w := &o.spec.Backends, &o.spec.Workload
	*w = routingbench.DefaultWorkload()
	fs.StringVar(&o.spec.Bins.Proxy, "drover", "", "drover-proxy binary (e.g. ./bin/drover-proxy)")
	fs.StringVar(&o.spec.Bins.Backend, "backend-bin", "", "fake Ollama binary (e.g. ./bin/fake-ollama)")
	fs.StringVar(&o.spec.Bins.NATS, "nats-bin", "", "nats-server binary, for setups of more than one replica")
	setups := fs.String("setups", defaultSetups, "comma-separated REPLICAS:STRATEGY (strategy prefix-noshare is prefix with routing.affinity.share false)")
	legacy := fs.Bool("legacy", false, "the proxy predates routing.strategy: write no strategy key (least_loaded only)")
	rates := fs.String("rates", "6,12,18,24,30", "offered requests per second, one step each (least_loaded saturates near 27 with the defaults)")
	step := fs.Duration("step", 5*time.Second, "length of each step")
	fs.DurationVar(&o.spec.Warmup, "warmup", 8*time.Second, "unmeasured run at the first rate before the ramp, so caches start warm")
	maxEntries := fs.Int("max-entries", 0, "routing.affinity.max_entries for every setup (0: the proxy's default)")
	quick := fs.Bool("quick", false, "a smoke run of a few seconds: setups 1:least_loaded,1:prefix, rates 4,8, 2 s steps, 8 groups of 400 words (unless given)")
	fs.IntVar(&b.Count, "backends", 4, "fake backends")
	fs.IntVar(&b.Parallel, "parallel", 4, "slots per backend (fake -parallel and routing.max_concurrency)")
	fs.DurationVar(&b.TokenCost, "token-cost", 200*time.Microsecond, "prompt cost per uncached token (2,000 tokens: 400 ms)")
	fs.IntVar(&b.CacheTokens, "cache-tokens", 3072, "prompt cache per slot, in tokens (about one conversation, like an Ollama slot)")
	fs.DurationVar(&b.ChunkDelay, "chunk-delay", 10*time.Millisecond, "decode time per output token")
	fs.IntVar(&w.Groups, "groups", w.Groups, "conversation groups, each with its own system prompt")
	fs.IntVar(&w.SystemWords, "system-words", w.SystemWords, "system prompt length (words = fake tokens)")
	fs.Float64Var(&w.Zipf, "zipf", w.Zipf, "Zipf exponent of the groups' popularity")
	fs.IntVar(&w.UserWords, "user-words", w.UserWords, "user message length")
	fs.Float64Var(&w.MultiTurn, "multi-turn", w.MultiTurn, "share of sessions that are conversations")
	fs.IntVar(&w.Turns, "turns", w.Turns, "requests per conversation")
	fs.DurationVar(&w.ThinkTime, "think", w.ThinkTime, "mean pause between a reply and the next turn")
	fs.IntVar(&w.ReplyTokens, "reply-tokens", w.ReplyTokens, "num_predict of every request")
	fs.Uint64Var(&o.spec.Seed, "seed", 1, "workload seed (every setup gets the same schedule)")
	fs.DurationVar(&o.spec.P99Limit, "p99-limit", 2*time.Second, "TTFT p99 under which a step's throughput counts as sustained")
	fs.DurationVar(&o.spec.DrainWait, "drain", 60*time.Second, "after the ramp, how long open sessions may take")
	fs.DurationVar(&o.timeout, "timeout", 2*time.Minute, "per-request timeout")
	fs.StringVar(&o.jsonPath, "json", "", "write the results as JSON to this file")
	fs.StringVar(&o.svg, "svg", "", "write the plot to this file (e.g. docs/bench-routing.svg)")
	fs.StringVar(&o.spec.LogDir, "logs", "", "directory for child logs and configs (default: a new temp dir)")
	sweep := fs.String("sweep-groups", "", "comma-separated group counts (e.g. 8,32,128): run the setups once per count (setups default to 1:least_loaded,1:prefix here) and print how prefix compares with least_loaded as they move; -json writes the runs as an array, -svg is not written")
	fs.StringVar(&o.from, "from", "", "run nothing: read a -json file, check the targets again and write the tables (and -svg, -json)")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	if o.from != "" {
		return o, nil
	}
	if o.spec.Bins.Proxy == "" || o.spec.Bins.Backend == "" {
		return o, errors.New("-drover and -backend-bin are required")
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	if *sweep != "" {
		for _, g := range strings.Split(*sweep, ",") {
			n, err := strconv.Atoi(strings.TrimSpace(g))
			if err != nil || n < 1 {
				return o, fmt.Errorf("-sweep-groups: %q is not a positive whole number", g)
			}
			o.sweep = append(o.sweep, n)
		}
		if !set["setups"] {
			fs.Set("setups", "1:least_loaded,1:prefix")
		}
	}
	if *quick { // flags given explicitly still win
		for name, v := range map[string]string{"setups": "1:least_loaded,1:prefix", "rates": "4,8", "step": "2s",
			"groups": "8", "system-words": "400", "drain": "20s", "warmup": "2s"} {
			if !set[name] {
				fs.Set(name, v)
			}
		}
	}
	if err := w.Validate(); err != nil {
		return o, fmt.Errorf("workload: %w", err)
	}
	if b.Count < 1 || b.Parallel < 1 {
		return o, errors.New("-backends and -parallel must be at least 1")
	}
	for _, r := range strings.Split(*rates, ",") {
		v, err := strconv.ParseFloat(strings.TrimSpace(r), 64)
		if err != nil || v <= 0 {
			return o, fmt.Errorf("-rates: %q is not a positive number", r)
		}
		o.spec.Steps = append(o.spec.Steps, routingbench.Step{Rate: v, Duration: *step})
	}
	var err error
	if o.setups, err = parseSetups(*setups, *legacy); err != nil {
		return o, err
	}
	for i := range o.setups {
		o.setups[i].MaxEntries = *maxEntries
	}
	for _, s := range o.setups {
		if s.Replicas > 1 && o.spec.Bins.NATS == "" {
			return o, fmt.Errorf("-setups: %s has %d replicas and needs -nats-bin", s.Name, s.Replicas)
		}
	}
	return o, nil
}

var strategies = map[string]bool{"least_loaded": true, "round_robin": true, "session": true, "prefix": true, "prefix-noshare": true}

func parseSetups(s string, legacy bool) ([]routingbench.Setup, error) {
	var out []routingbench.Setup
	for _, item := range strings.Split(s, ",") {
		n, strategy, ok := strings.Cut(strings.TrimSpace(item), ":")
		replicas, err := strconv.Atoi(n)
		if !ok || err != nil || replicas < 1 || !strategies[strategy] {
			return nil, fmt.Errorf("-setups: %q is not REPLICAS:STRATEGY (strategies: least_loaded, round_robin, session, prefix, prefix-noshare)", item)
		}
		setup := routingbench.Setup{Name: fmt.Sprintf("%s x%d", strategy, replicas), Strategy: strategy, Replicas: replicas, Share: true}
		if strategy == "prefix-noshare" {
			setup.Strategy, setup.Share = "prefix", false
		}
		if legacy {
			if setup.Strategy != "least_loaded" {
				return nil, fmt.Errorf("-legacy: only least_loaded exists before routing.strategy, not %s", setup.Strategy)
			}
			setup.NoKeys = true
		}
		out = append(out, setup)
	}
	return out, nil
}

func main() {
	o, err := parseFlags(os.Args[1:])
	if errors.Is(err, flag.ErrHelp) {
		os.Exit(0)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "drover-bench-routing:", err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, o, os.Stdout, os.Stderr); err != nil {
		slog.Error("benchmark failed", "err", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, o options, stdout, stderr io.Writer) error {
	if o.from != "" {
		return rerender(o, stdout)
	}
	load := loadAvg()
	if load > 1 {
		fmt.Fprintf(stderr, "warning: 1-minute load average is %.2f; the machine is not quiet, numbers will be noisy\n", load)
	}
	if o.spec.LogDir == "" {
		dir, err := os.MkdirTemp("", "drover-bench-routing-")
		if err != nil {
			return fmt.Errorf("creating log dir: %w", err)
		}
		o.spec.LogDir = dir
	} else if err := os.MkdirAll(o.spec.LogDir, 0o755); err != nil {
		return fmt.Errorf("creating log dir: %w", err)
	}
	fmt.Fprintf(stderr, "child logs and configs in %s\n", o.spec.LogDir)
	o.spec.Client = routingbench.Client{HTTP: &http.Client{Transport: keepalive.Transport(), Timeout: o.timeout}, TokenCost: o.spec.Backends.TokenCost}
	defer o.spec.Client.HTTP.CloseIdleConnections()

	if len(o.sweep) > 0 {
		return runSweep(ctx, o, stdout, stderr, load)
	}
	return finish(o, runSetups(ctx, o, stderr, load), stdout, ctx.Err())
}

// runSweep runs the setups once per group count of -sweep-groups.
func runSweep(ctx context.Context, o options, stdout, stderr io.Writer, load float64) error {
	var docs []routingbench.Document
	failed := 0
	for i, g := range o.sweep {
		if ctx.Err() != nil {
			break
		}
		if i > 0 {
			load = loadAvg()
		}
		o.spec.Workload.Groups = g
		fmt.Fprintf(stderr, "groups %d\n", g)
		doc := runSetups(ctx, o, stderr, load)
		doc.CheckTargets()
		doc.WriteMarkdown(stdout)
		fmt.Fprintln(stdout)
		failed += len(doc.Failures)
		docs = append(docs, doc)
	}
	routingbench.WriteSweep(stdout, "groups", docs)
	if o.jsonPath != "" {
		if err := writeFile(o.jsonPath, func(w io.Writer) error {
			enc := json.NewEncoder(w)
			enc.SetIndent("", "  ")
			return enc.Encode(docs)
		}); err != nil {
			return err
		}
	}
	if failed > 0 {
		return fmt.Errorf("%d setup run(s) failed", failed)
	}
	return ctx.Err()
}

// runSetups runs every setup on o.spec and returns what they measured.
func runSetups(ctx context.Context, o options, stderr io.Writer, load float64) routingbench.Document {
	b, w := o.spec.Backends, o.spec.Workload
	doc := routingbench.Document{Started: time.Now(), LoadAvg: load, Settings: map[string]string{
		"backends": strconv.Itoa(b.Count), "parallel": strconv.Itoa(b.Parallel), "token_cost": b.TokenCost.String(),
		"cache_tokens": strconv.Itoa(b.CacheTokens), "chunk_delay": b.ChunkDelay.String(),
		"groups": strconv.Itoa(w.Groups), "system_words": strconv.Itoa(w.SystemWords), "zipf": fmt.Sprint(w.Zipf),
		"user_words": strconv.Itoa(w.UserWords), "multi_turn": fmt.Sprint(w.MultiTurn), "turns": strconv.Itoa(w.Turns),
		"think": w.ThinkTime.String(), "reply_tokens": strconv.Itoa(w.ReplyTokens), "seed": strconv.FormatUint(o.spec.Seed, 10),
		"step": o.spec.Steps[0].Duration.String(), "warmup": o.spec.Warmup.String(), "max_entries": strconv.Itoa(o.setups[0].MaxEntries), "rates": fmt.Sprint(rates(o.spec.Steps)),
	}}
	for _, s := range o.setups {
		if ctx.Err() != nil {
			break
		}
		fmt.Fprintf(stderr, "%s: %d steps of %v\n", s.Name, len(o.spec.Steps), o.spec.Steps[0].Duration)
		res, err := routingbench.Run(ctx, o.spec, s)
		if err != nil {
			fmt.Fprintln(stderr, err)
			doc.Failures = append(doc.Failures, err.Error())
			continue
		}
		fmt.Fprintf(stderr, "  hit rate %.1f %%, TTFT p50 %.0f ms p99 %.0f ms, %d errors\n", 100*res.HitRate, res.TTFTP50, res.TTFTP99, res.Errors)
		doc.Results = append(doc.Results, res)
	}
	return doc
}

// rerender reads a document written by -json and reports it again, with
// the targets checked by this build.
func rerender(o options, stdout io.Writer) error {
	b, err := os.ReadFile(o.from)
	if err != nil {
		return fmt.Errorf("-from: %w", err)
	}
	var doc routingbench.Document
	if err := json.Unmarshal(b, &doc); err != nil {
		return fmt.Errorf("-from %s: %w", o.from, err)
	}
	return finish(o, doc, stdout, nil)
}

func finish(o options, doc routingbench.Document, stdout io.Writer, runErr error) error {
	doc.CheckTargets()
	if o.jsonPath != "" {
		if err := writeFile(o.jsonPath, doc.WriteJSON); err != nil {
			return err
		}
	}
	if o.svg != "" {
		if err := writeFile(o.svg, doc.WriteSVG); err != nil {
			return err
		}
	}
	doc.WriteMarkdown(stdout)
	if len(doc.Failures) > 0 {
		return fmt.Errorf("%d setup(s) could not run", len(doc.Failures))
	}
	return runErr
}

func rates(steps []routingbench.Step) []float64 {
	out := make([]float64, len(steps))
	for i, s := range steps {
		out[i] = s.Rate
	}
	return out
}

func writeFile(path string, write func(io.Writer) error) error {
	f, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("creating %s: %w", path, err)
	}
	if err := write(f); err != nil {
		f.Close()
		return fmt.Errorf("writing %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	return nil
}

// loadAvg returns the 1-minute load average, or 0 where it is unknown.
func loadAvg() float64 {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return 0
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return 0
	}
	v, _ := strconv.ParseFloat(f[0], 64)
	return v
}
