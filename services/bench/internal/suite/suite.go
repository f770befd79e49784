// Package suite runs the benchmark plan: every workload in every load mode
// against every target, interleaving the targets within each round so that
// drift on a shared machine (another process waking up, thermal limits)
// hits all of them alike, and reduces the rounds to one row per combination.
package suite

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"slices"
	"time"

	"github.com/droverhq/drover/services/bench/internal/loadgen"
	"github.com/droverhq/drover/services/bench/internal/workload"
)

// Target names the report knows how to compare.
const (
	Direct = "direct"
	Bare   = "bare"
	Drover = "drover"
	// DroverNATS is drover-proxy with usage publishing to JetStream on.
	DroverNATS = "drover+nats"
	// Baseline is drover-proxy built from an earlier commit, run beside
	// the current one to show a change did not make it slower.
	Baseline = "baseline"
)

// Target is one base URL under test, with its own connection pool.
type Target struct {
	Name   string
	URL    string
	Client *http.Client
	// CPU, when set, returns the cumulative CPU time of the target's
	// process; SideCPU that of a process it depends on (NATS).
	CPU, SideCPU func() time.Duration
}

// Mode is one way of applying load.
type Mode struct {
	Closed bool    // closed loop: Conns workers back to back; else open loop
	Conns  int     // closed loop only
	Rate   float64 // open loop only, requests per second
}

// Name labels the mode in reports, e.g. "closed c=64" or "open 2000/s".
func (m Mode) Name() string {
	if m.Closed {
		return fmt.Sprintf("closed c=%d", m.Conns)
	}
	return fmt.Sprintf("open %g/s", m.Rate)
}

// Pick says how rounds reduce to one number per metric.
type Pick string

const (
	// Median takes each metric's median over the rounds.
	Median Pick = "median"
	// Best takes each metric's best round: highest req/s, lowest p50, p99.
	Best Pick = "best"
)

// Plan is everything one benchmark run does.
type Plan struct {
	Targets     []Target
	Workloads   []workload.Workload
	Modes       []Mode
	Duration    time.Duration // per measured run
	Warmup      time.Duration // closed loop per target before each workload; 0 skips
	Rounds      int
	Pick        Pick
	MaxInFlight int       // open-loop cap on outstanding requests
	Progress    io.Writer // one line per run; nil for none
}

// Row is one target × mode × workload, reduced over the rounds.
type Row struct {
	Target   string            `json:"target"`
	Mode     string            `json:"mode"`
	Closed   bool              `json:"closed_loop"`
	Workload string            `json:"workload"`
	Summary  loadgen.Summary   `json:"summary"` // ok and errors are totals over rounds
	Rounds   []loadgen.Summary `json:"rounds"`
	Kinds    map[string]int    `json:"error_kinds,omitempty"`
	MaxLag   time.Duration     `json:"max_dispatch_lag_ns,omitempty"`
}

// Run executes the plan and returns rows in plan order: workload, mode,
// target. It stops early, returning what it has, if ctx ends.
func Run(ctx context.Context, p Plan) ([]Row, error) {
	if p.Rounds < 1 {
		return nil, fmt.Errorf("rounds must be at least 1, got %d", p.Rounds)
	}
	var rows []Row
	for _, w := range p.Workloads {
		if p.Warmup > 0 {
			for _, t := range p.Targets {
				if _, err := loadgen.Closed(ctx, t.Client, t.URL, w, 64, p.Warmup); err != nil {
					return rows, fmt.Errorf("warming up %s with %s: %w", t.Name, w.Name, err)
				}
			}
		}
		for _, m := range p.Modes {
			block := make([]Row, len(p.Targets))
			for i, t := range p.Targets {
				block[i] = Row{Target: t.Name, Mode: m.Name(), Closed: m.Closed, Workload: w.Name, Kinds: map[string]int{}}
			}
			for round := range p.Rounds {
				for i, t := range p.Targets {
					cpu0, side0 := read(t.CPU), read(t.SideCPU)
					res, err := runOnce(ctx, p, t, w, m)
					if err != nil {
						return rows, fmt.Errorf("%s %s %s round %d: %w", t.Name, m.Name(), w.Name, round+1, err)
					}
					s := res.Summarize()
					if s.OK > 0 {
						s.CPUPerReq = (read(t.CPU) - cpu0) / time.Duration(s.OK)
						s.SideCPUPerReq = (read(t.SideCPU) - side0) / time.Duration(s.OK)
					}
					r := &block[i]
					r.Rounds = append(r.Rounds, s)
					for k, n := range res.Kinds {
						r.Kinds[k] += n
					}
					r.MaxLag = max(r.MaxLag, res.MaxLag)
					if p.Progress != nil {
						fmt.Fprintf(p.Progress, "round %d/%d  %-7s %-12s %-14s %8.0f req/s  p50 %-9v p99 %-9v errors %d\n",
							round+1, p.Rounds, t.Name, m.Name(), w.Name, s.ReqPerSec, s.P50.Round(time.Microsecond), s.P99.Round(time.Microsecond), s.Errors)
					}
				}
			}
			for i := range block {
				block[i].Summary = reduce(block[i].Rounds, p.Pick)
				if len(block[i].Kinds) == 0 {
					block[i].Kinds = nil
				}
			}
			rows = append(rows, block...)
		}
	}
	return rows, nil
}

func read(cpu func() time.Duration) time.Duration {
	if cpu == nil {
		return 0
	}
	return cpu()
}

func runOnce(ctx context.Context, p Plan, t Target, w workload.Workload, m Mode) (loadgen.Result, error) {
	if m.Closed {
		return loadgen.Closed(ctx, t.Client, t.URL, w, m.Conns, p.Duration)
	}
	return loadgen.Open(ctx, t.Client, t.URL, w, m.Rate, p.Duration, p.MaxInFlight)
}

// reduce folds rounds into one summary: each metric picked on its own, ok
// and error counts summed.
func reduce(rounds []loadgen.Summary, pick Pick) loadgen.Summary {
	var out loadgen.Summary
	rps := make([]float64, len(rounds))
	p50 := make([]time.Duration, len(rounds))
	p99 := make([]time.Duration, len(rounds))
	cpu := make([]time.Duration, len(rounds))
	side := make([]time.Duration, len(rounds))
	for i, r := range rounds {
		out.OK += r.OK
		out.Errors += r.Errors
		rps[i], p50[i], p99[i] = r.ReqPerSec, r.P50, r.P99
		cpu[i], side[i] = r.CPUPerReq, r.SideCPUPerReq
	}
	slices.Sort(rps)
	slices.Sort(p50)
	slices.Sort(p99)
	slices.Sort(cpu)
	slices.Sort(side)
	if pick == Best {
		out.ReqPerSec, out.P50, out.P99 = rps[len(rps)-1], p50[0], p99[0]
		out.CPUPerReq, out.SideCPUPerReq = cpu[0], side[0]
		return out
	}
	mid := func(a, b time.Duration) time.Duration { return (a + b) / 2 }
	out.CPUPerReq, out.SideCPUPerReq = median(cpu, mid), median(side, mid)
	out.ReqPerSec = median(rps, func(a, b float64) float64 { return (a + b) / 2 })
	out.P50 = median(p50, func(a, b time.Duration) time.Duration { return (a + b) / 2 })
	out.P99 = median(p99, func(a, b time.Duration) time.Duration { return (a + b) / 2 })
	return out
}

func median[T any](sorted []T, mid func(a, b T) T) T {
	n := len(sorted)
	if n%2 == 1 {
		return sorted[n/2]
	}
	return mid(sorted[n/2-1], sorted[n/2])
}
