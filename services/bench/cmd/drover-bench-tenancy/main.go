// Command drover-bench-tenancy measures issue 14's limits and fair sharing
// on a fleet of drover-proxy replicas sharing one nats-server, all started
// here as processes in front of fake Ollama backends: budget overshoot
// under concurrent bursts (admission reserve beside the naive count), the
// light key's queue wait and the slot shares of two keys on a saturated
// fleet, and interactive wait beside a batch flood. It prints Markdown
// tables and optionally writes JSON; docs/limits-bench.md has the method.
package main

import (
	"context"
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
	"github.com/droverhq/drover/services/bench/internal/tenancy"
)

type options struct {
	bins             tenancy.Bins
	scenarios        map[string]bool
	replicas         int
	budget           int64
	burst            int
	words, output    int
	latency          time.Duration
	backends, cap    int
	chunkDelay       time.Duration
	slotTokens       int
	outputSpread     float64
	headroom         int
	duration, warmup time.Duration
	window           time.Duration
	rateB, rateChat  float64
	timeout          time.Duration
	jsonPath, logDir string
	idealDraws       int
}

// idealScenario runs no fleet: the model of a scheduler that cannot
// preempt, over many draws (-ideal-draws), in a second.
const idealScenario = "ideal"

var allScenarios = []string{"overshoot", "fairness", "priority", idealScenario}

func parseFlags(args []string) (options, error) {
	var o options
	var scen string
	fs := flag.NewFlagSet("drover-bench-tenancy", flag.ContinueOnError)
	fs.StringVar(&o.bins.Proxy, "drover", "", "drover-proxy binary (e.g. ./bin/drover-proxy)")
	fs.StringVar(&o.bins.Backend, "backend-bin", "", "fake Ollama binary (e.g. ./bin/fake-ollama)")
	fs.StringVar(&o.bins.NATS, "nats-bin", "", "nats-server binary, run with JetStream and no authentication on loopback")
	fs.StringVar(&scen, "scenarios", strings.Join(allScenarios, ","), "comma-separated: "+strings.Join(allScenarios, ", ")+" (ideal: the model of a scheduler that cannot preempt, over many draws; no fleet)")
	fs.IntVar(&o.idealDraws, "ideal-draws", 200, "ideal: draws of A's arrivals and of the flood's start")
	fs.IntVar(&o.replicas, "replicas", 3, "drover-proxy replicas sharing one NATS")
	fs.Int64Var(&o.budget, "budget", 100_000, "overshoot: the key's tokens_per_day")
	fs.IntVar(&o.burst, "burst", 50, "overshoot: concurrent requests, each sending its next when the last ends, until refused")
	fs.IntVar(&o.words, "words", 496, "overshoot: prompt words (prompt tokens = words + 4)")
	fs.IntVar(&o.output, "output", 500, "overshoot: num_predict (output tokens)")
	fs.DurationVar(&o.latency, "latency", 100*time.Millisecond, "overshoot: the backend's pause before each reply, so requests overlap")
	fs.IntVar(&o.backends, "backends", 2, "fairness, priority: fake backends")
	fs.IntVar(&o.cap, "cap", 2, "fairness, priority: routing.max_concurrency (fleet-wide slots per backend)")
	fs.DurationVar(&o.chunkDelay, "chunk-delay", 10*time.Millisecond, "fairness, priority: the backends' pause before each token")
	fs.IntVar(&o.headroom, "headroom", -1, "fairness, priority: routing.queue.interactive_headroom (negative: the default)")
	fs.IntVar(&o.slotTokens, "slot-tokens", 20, "fairness, priority: num_predict, so a request holds a slot slot-tokens × chunk-delay")
	fs.Float64Var(&o.outputSpread, "output-spread", 0, "fairness neighbour: draw each request's num_predict uniformly within slot-tokens × (1 ± output-spread), 0 to 1 (0: all equal, as reported)")
	fs.DurationVar(&o.duration, "duration", 40*time.Second, "fairness, priority: length of each phase")
	fs.DurationVar(&o.warmup, "warmup", 2*time.Second, "fairness, priority: start of a flood left out of the measurement")
	fs.DurationVar(&o.window, "window", time.Second, "fairness: width of the windows Jain's index is taken over")
	fs.Float64Var(&o.rateB, "rate-b", 5, "fairness: key B's requests per second (A sends ten times as many)")
	fs.Float64Var(&o.rateChat, "rate-interactive", 5, "priority: interactive requests per second")
	fs.DurationVar(&o.timeout, "timeout", 2*time.Minute, "per-request timeout")
	fs.StringVar(&o.jsonPath, "json", "", "also write the results as JSON to this file")
	fs.StringVar(&o.logDir, "logs", "", "directory for child logs and configs (default: a new temp dir)")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	o.scenarios = map[string]bool{}
	for _, s := range strings.Split(scen, ",") {
		s = strings.TrimSpace(s)
		switch s {
		case "":
		case "overshoot", "fairness", "priority", idealScenario:
			o.scenarios[s] = true
		default:
			return o, fmt.Errorf("-scenarios: unknown scenario %q (%s)", s, strings.Join(allScenarios, ", "))
		}
	}
	if len(o.scenarios) == 0 {
		return o, errors.New("-scenarios: none selected")
	}
	if o.fleet() && (o.bins.Proxy == "" || o.bins.Backend == "" || o.bins.NATS == "") {
		return o, errors.New("-drover, -backend-bin and -nats-bin are all required (all but the ideal scenario run a fleet)")
	}
	if o.replicas < 1 || o.backends < 1 || o.cap < 1 || o.burst < 1 {
		return o, errors.New("-replicas, -backends, -cap and -burst must be at least 1")
	}
	if o.rateB <= 0 || o.rateChat <= 0 {
		return o, errors.New("-rate-b and -rate-interactive must be positive")
	}
	if o.idealDraws < 1 {
		return o, errors.New("-ideal-draws must be at least 1")
	}
	if o.outputSpread < 0 || o.outputSpread > 1 {
		return o, fmt.Errorf("-output-spread: %v is not within 0 to 1", o.outputSpread)
	}
	return o, nil
}

// fleet reports whether a selected scenario starts a fleet (all but the
// ideal model do).
func (o options) fleet() bool { return len(o.scenarios) > 1 || !o.scenarios[idealScenario] }

func main() {
	o, err := parseFlags(os.Args[1:])
	if errors.Is(err, flag.ErrHelp) {
		os.Exit(0)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "drover-bench-tenancy:", err)
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
	load := loadAvg()
	if load > 0.5 {
		fmt.Fprintf(stderr, "warning: 1-minute load average is %.2f; the machine is not quiet, numbers will be noisy\n", load)
	}
	logDir := o.logDir
	if o.fleet() {
		var err error
		if logDir == "" {
			if logDir, err = os.MkdirTemp("", "drover-bench-tenancy-"); err != nil {
				return fmt.Errorf("creating log dir: %w", err)
			}
		} else if err := os.MkdirAll(logDir, 0o755); err != nil {
			return fmt.Errorf("creating log dir: %w", err)
		}
		fmt.Fprintf(stderr, "child logs and configs in %s\n", logDir)
	}
	client := tenancy.Client{HTTP: &http.Client{Transport: keepalive.Transport(), Timeout: o.timeout}}
	defer client.HTTP.CloseIdleConnections()

	sat := tenancy.SaturationSpec{
		Replicas: o.replicas, Backends: o.backends, Cap: o.cap, ChunkDelay: o.chunkDelay,
		MaxPerKey: 32, Headroom: o.headroom, Req: tenancy.Request{Model: "tiny", Words: 8, Output: o.slotTokens}, OutputSpread: o.outputSpread,
		Duration: o.duration, Warmup: o.warmup, Window: o.window,
	}
	rep := tenancy.Report{Started: time.Now(), LoadAvg: load, Settings: map[string]string{
		"replicas": strconv.Itoa(o.replicas), "budget": strconv.FormatInt(o.budget, 10), "burst": strconv.Itoa(o.burst),
		"request_tokens":  strconv.FormatInt(tenancy.Request{Words: o.words, Output: o.output}.Tokens(), 10),
		"backend_latency": o.latency.String(), "backends": strconv.Itoa(o.backends), "cap": strconv.Itoa(o.cap),
		"slot_time": sat.Service().String(), "output_spread": strconv.FormatFloat(o.outputSpread, 'g', -1, 64), "duration": o.duration.String(), "window": o.window.String(),
		"headroom": strconv.Itoa(o.headroom), "rate_b": strconv.FormatFloat(o.rateB, 'g', -1, 64), "rate_interactive": strconv.FormatFloat(o.rateChat, 'g', -1, 64),
	}}
	failed := func(scenario string, err error) {
		fmt.Fprintf(stderr, "%s: %v\n", scenario, err)
		rep.Failures = append(rep.Failures, scenario+": "+err.Error())
	}
	if o.scenarios["overshoot"] {
		spec := tenancy.OvershootSpec{
			Budget: o.budget, Conns: o.burst, Latency: o.latency, MaxRun: 2 * time.Minute, Replicas: o.replicas,
			Req: tenancy.Request{Model: "tiny", Words: o.words, Output: o.output},
		}
		for _, mode := range []string{"count", "reserve"} {
			fmt.Fprintf(stderr, "overshoot, admission %s\n", mode)
			res, err := tenancy.RunOvershoot(ctx, o.bins, logDir, mode, spec, client)
			if err != nil {
				failed("overshoot "+mode, err)
				continue
			}
			rep.Overshoot = append(rep.Overshoot, res)
		}
	}
	if o.scenarios["fairness"] && ctx.Err() == nil {
		fmt.Fprintln(stderr, "fairness: B alone, then beside A at ten times its rate")
		if res, err := tenancy.RunNeighbour(ctx, o.bins, logDir, sat, o.rateB, client); err != nil {
			failed("fairness neighbour", err)
		} else {
			rep.Neighbour = &res
		}
		for _, w := range [][2]int{{1, 1}, {3, 1}} {
			fmt.Fprintf(stderr, "fairness: shares with weights %d:%d\n", w[0], w[1])
			res, err := tenancy.RunShares(ctx, o.bins, logDir, sat, w[0], w[1], client)
			if err != nil {
				failed(fmt.Sprintf("fairness shares %d:%d", w[0], w[1]), err)
				continue
			}
			if w[0] == w[1] {
				rep.Equal = &res
			} else {
				rep.Weighted = &res
			}
		}
	}
	if o.scenarios["priority"] && ctx.Err() == nil {
		fmt.Fprintln(stderr, "priority: interactive alone, then beside a batch flood")
		if res, err := tenancy.RunPriority(ctx, o.bins, logDir, sat, o.rateChat, client); err != nil {
			failed("priority", err)
		} else {
			rep.Priority = &res
		}
	}
	if o.scenarios[idealScenario] {
		fmt.Fprintf(stderr, "ideal: the model over %d draws\n", o.idealDraws)
		sweep := tenancy.SweepIdeal(sat, o.rateB, o.rateChat, o.idealDraws)
		rep.Ideal = &sweep
	}
	if o.jsonPath != "" {
		f, err := os.Create(o.jsonPath)
		if err != nil {
			return fmt.Errorf("creating JSON report: %w", err)
		}
		if err := rep.WriteJSON(f); err != nil {
			f.Close()
			return fmt.Errorf("writing JSON report: %w", err)
		}
		if err := f.Close(); err != nil {
			return fmt.Errorf("writing JSON report: %w", err)
		}
	}
	rep.WriteMarkdown(stdout)
	if len(rep.Failures) > 0 {
		return fmt.Errorf("%d scenario(s) could not run", len(rep.Failures))
	}
	return ctx.Err()
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
