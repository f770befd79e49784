// Command drover-bench measures what Drover costs: the same workloads, in
// one interleaved run, sent straight to a fake Ollama backend, through a bare
// httputil.ReverseProxy, and through drover-proxy, and prints the results
// with Drover-versus-bare ratios as a Markdown table (and optionally JSON).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/droverhq/drover/services/bench/internal/bareproxy"
	"github.com/droverhq/drover/services/bench/internal/launch"
	"github.com/droverhq/drover/services/bench/internal/loadgen"
	"github.com/droverhq/drover/services/bench/internal/report"
	"github.com/droverhq/drover/services/bench/internal/suite"
	"github.com/droverhq/drover/services/bench/internal/workload"
)

type options struct {
	backendBin, backendURL string
	droverBin, droverURL   string
	droverNATS             bool
	baselineBin            string
	natsBin                string
	workloads, modes       string
	duration, warmup       time.Duration
	timeout                time.Duration
	rounds, conns          int
	rate                   float64
	maxInFlight            int
	pick                   string
	targets                string
	jsonPath, logDir       string
}

func parseFlags(args []string) (options, error) {
	var o options
	fs := flag.NewFlagSet("drover-bench", flag.ContinueOnError)
	fs.StringVar(&o.backendBin, "backend-bin", "", "fake Ollama binary to start (e.g. ./bin/fake-ollama)")
	fs.StringVar(&o.backendURL, "backend-url", "", "use an already-running backend at this URL instead of -backend-bin")
	fs.StringVar(&o.droverBin, "drover", "", "drover-proxy binary to start (e.g. ./bin/drover-proxy)")
	fs.StringVar(&o.droverURL, "drover-url", "", "use an already-running Drover at this URL instead of -drover")
	fs.BoolVar(&o.droverNATS, "drover-nats", false, "also start a NATS JetStream server and a second -drover publishing usage to it (target drover+nats)")
	fs.StringVar(&o.baselineBin, "baseline", "", "also start this earlier build of drover-proxy (target baseline) and report drover ÷ baseline")
	fs.StringVar(&o.natsBin, "nats-bin", "", "with -drover-nats: run this nats-server binary as its own process, as deployed (default: NATS embedded in drover-bench)")
	fs.StringVar(&o.workloads, "workloads", workload.Default, "comma-separated workloads, or all: "+strings.Join(workload.Names(), ", "))
	fs.StringVar(&o.modes, "modes", "closed,open", "load modes to run: closed, open or both")
	fs.DurationVar(&o.duration, "duration", 10*time.Second, "length of each measured run")
	fs.DurationVar(&o.warmup, "warmup", time.Second, "closed-loop warm-up per target before each workload (0 to skip)")
	fs.IntVar(&o.rounds, "rounds", 3, "rounds; each round runs every target once, interleaved")
	fs.StringVar(&o.targets, "targets", "all", "targets to measure, comma-separated, or all: "+strings.Join(targetNames, ", ")+" (the others are still started, but not loaded)")
	fs.StringVar(&o.pick, "pick", string(suite.Median), "how rounds reduce to one row: median or best")
	fs.IntVar(&o.conns, "conns", 64, "closed loop: concurrent connections")
	fs.Float64Var(&o.rate, "rate", 2000, "open loop: requests per second")
	fs.IntVar(&o.maxInFlight, "max-inflight", 4096, "open loop: requests outstanding before new ones are dropped (counted as errors)")
	fs.DurationVar(&o.timeout, "timeout", 30*time.Second, "per-request timeout, including reading the whole stream")
	fs.StringVar(&o.jsonPath, "json", "", "also write results as JSON to this file; - writes JSON to stdout instead of Markdown")
	fs.StringVar(&o.logDir, "logs", "", "directory for child process logs and the Drover config (default: a new temp dir)")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	if (o.backendBin == "") == (o.backendURL == "") {
		return o, errors.New("give exactly one of -backend-bin or -backend-url")
	}
	if o.droverBin != "" && o.droverURL != "" {
		return o, errors.New("give at most one of -drover or -drover-url")
	}
	if o.baselineBin != "" && o.droverBin == "" && o.droverURL == "" {
		return o, errors.New("-baseline needs -drover or -drover-url (the build to compare with it)")
	}
	if o.droverNATS && o.droverBin == "" {
		return o, errors.New("-drover-nats needs -drover (a binary to start with publishing on)")
	}
	if _, err := pickTargets(o.targets); err != nil {
		return o, err
	}
	if o.pick != string(suite.Median) && o.pick != string(suite.Best) {
		return o, fmt.Errorf("-pick must be median or best, got %q", o.pick)
	}
	return o, nil
}

func main() {
	if len(os.Args) > 1 && os.Args[1] == serveBare {
		if err := runBare(os.Args[2:]); err != nil {
			fmt.Fprintln(os.Stderr, "drover-bench serve-bare:", err)
			os.Exit(1)
		}
		return
	}
	opts, err := parseFlags(os.Args[1:])
	if errors.Is(err, flag.ErrHelp) {
		os.Exit(0)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "drover-bench:", err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, opts, os.Stdout, os.Stderr); err != nil {
		slog.Error("benchmark failed", "err", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, o options, stdout, stderr io.Writer) error {
	ws, err := workload.Select(o.workloads)
	if err != nil {
		return err
	}
	modes, err := parseModes(o.modes, o.conns, o.rate)
	if err != nil {
		return err
	}
	load := loadAvg()
	if load > 0.5 {
		fmt.Fprintf(stderr, "warning: 1-minute load average is %.2f; the machine is not quiet, numbers will be noisy\n", load)
	}
	logDir := o.logDir
	if logDir == "" {
		if logDir, err = os.MkdirTemp("", "drover-bench-"); err != nil {
			return fmt.Errorf("creating log dir: %w", err)
		}
	} else if err := os.MkdirAll(logDir, 0o755); err != nil {
		return fmt.Errorf("creating log dir: %w", err)
	}
	fmt.Fprintf(stderr, "child logs and config in %s\n", logDir)

	startCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	backendURL := o.backendURL
	if o.backendBin != "" {
		p, err := launch.StartFakeOllama(startCtx, o.backendBin, logDir)
		if err != nil {
			return err
		}
		defer stopProcess(p)
		backendURL = p.URL
	}
	if err := checkReady(startCtx, "backend", backendURL); err != nil {
		return err
	}
	bu, err := url.Parse(backendURL)
	if err != nil {
		return fmt.Errorf("parsing backend URL: %w", err)
	}
	// The bare proxy runs as a process of its own, like Drover, so that it
	// does not share a heap and a garbage collector with the load generator.
	bare, err := startBare(startCtx, bu, logDir)
	if err != nil {
		return err
	}
	defer stopProcess(bare)
	targets := []suite.Target{
		{Name: suite.Direct, URL: backendURL},
		{Name: suite.Bare, URL: bare.URL, CPU: bare.CPU},
	}
	droverURL := o.droverURL
	var droverCPU func() time.Duration
	if o.droverBin != "" {
		p, err := launch.StartDrover(startCtx, o.droverBin, backendURL, logDir)
		if err != nil {
			return err
		}
		defer stopProcess(p)
		droverURL, droverCPU = p.URL, p.CPU
	}
	if droverURL != "" {
		if err := checkReady(startCtx, "drover", droverURL); err != nil {
			return err
		}
		targets = append(targets, suite.Target{Name: suite.Drover, URL: strings.TrimRight(droverURL, "/"), CPU: droverCPU})
		if o.baselineBin != "" {
			p, err := launch.StartBaseline(startCtx, o.baselineBin, backendURL, logDir)
			if err != nil {
				return err
			}
			defer stopProcess(p)
			targets = append(targets, suite.Target{Name: suite.Baseline, URL: p.URL, CPU: p.CPU})
		}
		if o.droverNATS {
			var n *launch.NATS
			if o.natsBin != "" {
				n, err = launch.StartNATSProcess(startCtx, o.natsBin, logDir)
			} else {
				n, err = launch.StartNATS(logDir)
			}
			if err != nil {
				return err
			}
			defer n.Stop() //nolint:errcheck // best effort at exit
			p, err := launch.StartDroverNATS(startCtx, o.droverBin, backendURL, n.URL(), logDir)
			if err != nil {
				return err
			}
			defer stopProcess(p)
			targets = append(targets, suite.Target{Name: suite.DroverNATS, URL: p.URL, CPU: p.CPU, SideCPU: n.CPU()})
		}
	} else {
		fmt.Fprintln(stderr, "warning: no -drover or -drover-url; comparing direct and bare only")
	}
	keep, _ := pickTargets(o.targets) // checked by parseFlags
	if keep != nil {
		kept := targets[:0]
		for _, t := range targets {
			if keep[t.Name] {
				kept = append(kept, t)
			}
		}
		targets = kept
	}
	for i := range targets {
		targets[i].Client = loadgen.NewClient(o.timeout)
		defer targets[i].Client.CloseIdleConnections()
	}

	doc := report.Document{
		Started: time.Now(),
		LoadAvg: load,
		Settings: map[string]string{
			"duration": o.duration.String(), "rounds": strconv.Itoa(o.rounds), "pick": o.pick,
			"conns": strconv.Itoa(o.conns), "rate": strconv.FormatFloat(o.rate, 'g', -1, 64),
		},
	}
	rows, runErr := suite.Run(ctx, suite.Plan{
		Targets: targets, Workloads: ws, Modes: modes,
		Duration: o.duration, Warmup: o.warmup, Rounds: o.rounds,
		Pick: suite.Pick(o.pick), MaxInFlight: o.maxInFlight, Progress: stderr,
	})
	doc.Rows = rows
	doc.Ratios = report.Ratios(rows)
	doc.Publishing = report.PublishingRatios(rows)
	doc.Baseline = report.BaselineRatios(rows)
	if err := write(doc, o.jsonPath, stdout); err != nil {
		return err
	}
	return runErr
}

// write prints the Markdown report to stdout and the JSON one where asked.
func write(doc report.Document, jsonPath string, stdout io.Writer) error {
	switch jsonPath {
	case "-":
		return report.JSON(stdout, doc)
	case "":
	default:
		f, err := os.Create(jsonPath)
		if err != nil {
			return fmt.Errorf("creating JSON report: %w", err)
		}
		if err := report.JSON(f, doc); err != nil {
			f.Close()
			return err
		}
		if err := f.Close(); err != nil {
			return fmt.Errorf("writing JSON report: %w", err)
		}
	}
	return report.Markdown(stdout, doc)
}

// targetNames are the targets -targets may name.
var targetNames = []string{suite.Direct, suite.Bare, suite.Drover, suite.Baseline, suite.DroverNATS}

// pickTargets parses -targets: nil for all, else the set named.
func pickTargets(list string) (map[string]bool, error) {
	if list == "all" {
		return nil, nil
	}
	keep := map[string]bool{}
	for _, name := range strings.Split(list, ",") {
		name = strings.TrimSpace(name)
		found := false
		for _, n := range targetNames {
			found = found || n == name
		}
		if !found {
			return nil, fmt.Errorf("-targets: unknown target %q (want all or some of %s)", name, strings.Join(targetNames, ", "))
		}
		keep[name] = true
	}
	return keep, nil
}

func parseModes(list string, conns int, rate float64) ([]suite.Mode, error) {
	var modes []suite.Mode
	for _, m := range strings.Split(list, ",") {
		switch strings.TrimSpace(m) {
		case "closed":
			modes = append(modes, suite.Mode{Closed: true, Conns: conns})
		case "open":
			modes = append(modes, suite.Mode{Rate: rate})
		case "":
		default:
			return nil, fmt.Errorf("unknown mode %q (closed, open)", m)
		}
	}
	if len(modes) == 0 {
		return nil, errors.New("no load modes selected")
	}
	return modes, nil
}

// checkReady fails fast when a target given by URL is not answering, rather
// than measuring a run of connection errors.
func checkReady(ctx context.Context, name, base string) error {
	client := &http.Client{Timeout: 5 * time.Second}
	defer client.CloseIdleConnections()
	if err := launch.Ready(ctx, client, strings.TrimRight(base, "/")+"/api/version"); err != nil {
		return fmt.Errorf("%s at %s is not ready: %w", name, base, err)
	}
	return nil
}

func stopProcess(p *launch.Process) {
	if err := p.Stop(); err != nil {
		slog.Warn("stopping child", "name", p.Name, "err", err)
	}
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

// serveBare is the hidden subcommand that runs the bare proxy in a child
// process: drover-bench serve-bare ADDR BACKEND_URL.
const serveBare = "serve-bare"

func startBare(ctx context.Context, backend *url.URL, logDir string) (*launch.Process, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("finding drover-bench itself: %w", err)
	}
	port, err := launch.FreePort()
	if err != nil {
		return nil, err
	}
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	return launch.Start(ctx, "bare", self, []string{serveBare, addr, backend.String()}, "http://"+addr, "/api/version", logDir)
}

func runBare(args []string) error {
	if len(args) != 2 {
		return errors.New("want ADDR BACKEND_URL")
	}
	bu, err := url.Parse(args[1])
	if err != nil {
		return err
	}
	srv, err := bareproxy.Start(args[0], bu)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	<-ctx.Done()
	c, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return srv.Close(c)
}
