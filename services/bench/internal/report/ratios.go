// Package report turns benchmark rows into the comparisons that matter
// (Drover against a bare reverse proxy, both against going direct) and
// prints them as a Markdown table or JSON.
package report

import (
	"fmt"
	"time"

	"github.com/droverhq/drover/services/bench/internal/suite"
)

// Goals for Drover relative to a bare httputil.ReverseProxy.
const (
	// MinThroughputRatio: Drover's saturated req/s ÷ the bare proxy's.
	MinThroughputRatio = 0.8
	// MaxAddedLatencyRatio: Drover's added latency over direct ÷ the bare
	// proxy's, at a fixed rate.
	MaxAddedLatencyRatio = 1.2
)

// Ratio is one Drover-versus-bare comparison.
type Ratio struct {
	Workload string  `json:"workload"`
	Mode     string  `json:"mode"`
	Metric   string  `json:"metric"` // "throughput", "added p50", "added p99"
	Value    float64 `json:"value"`
	Goal     string  `json:"goal"` // e.g. ">= 0.8"
	// Valid is false when the ratio is undefined (a target missing, or the
	// bare proxy added no latency); Value is then 0 and Note says why.
	Valid bool   `json:"valid"`
	Met   bool   `json:"met"`
	Note  string `json:"note,omitempty"`
}

type key struct{ target, mode, workload string }

func index(rows []suite.Row) map[key]suite.Row {
	by := make(map[key]suite.Row, len(rows))
	for _, r := range rows {
		by[key{r.Target, r.Mode, r.Workload}] = r
	}
	return by
}

// Ratios compares the drover rows with the bare and direct rows: throughput
// for every closed-loop mode, added p50 and p99 for every open-loop mode.
func Ratios(rows []suite.Row) []Ratio {
	by := index(rows)
	var out []Ratio
	for _, r := range rows {
		if r.Target != suite.Drover {
			continue
		}
		bare, okBare := by[key{suite.Bare, r.Mode, r.Workload}]
		direct, okDirect := by[key{suite.Direct, r.Mode, r.Workload}]
		if r.Closed {
			out = append(out, throughput(r, bare, okBare, "bare proxy", fmt.Sprintf(">= %.1f", MinThroughputRatio), MinThroughputRatio))
			continue
		}
		for _, m := range []struct {
			name string
			get  func(suite.Row) time.Duration
		}{
			{"added p50", func(x suite.Row) time.Duration { return x.Summary.P50 }},
			{"added p99", func(x suite.Row) time.Duration { return x.Summary.P99 }},
		} {
			ratio := Ratio{Workload: r.Workload, Mode: r.Mode, Metric: m.name, Goal: fmt.Sprintf("<= %.1f", MaxAddedLatencyRatio)}
			switch {
			case !okBare || !okDirect:
				ratio.Note = "needs direct and bare proxy rows"
			default:
				droverAdded := m.get(r) - m.get(direct)
				bareAdded := m.get(bare) - m.get(direct)
				ratio.Note = fmt.Sprintf("%s ÷ %s", ms(droverAdded), ms(bareAdded))
				if bareAdded <= 0 {
					ratio.Note += "; bare proxy added no latency, ratio undefined"
					break
				}
				ratio.Valid = true
				ratio.Value = float64(droverAdded) / float64(bareAdded)
				ratio.Met = ratio.Value <= MaxAddedLatencyRatio
			}
			out = append(out, ratio)
		}
	}
	return out
}

// throughput is r's saturated req/s ÷ base's (found says whether there is
// a base row; name is the base in notes), met at minimum or more.
func throughput(r, base suite.Row, found bool, name, goal string, minimum float64) Ratio {
	ratio := Ratio{Workload: r.Workload, Mode: r.Mode, Metric: "throughput", Goal: goal}
	switch {
	case !found:
		ratio.Note = "no " + name + " row"
	case base.Summary.ReqPerSec <= 0:
		ratio.Note = name + " completed no requests"
	default:
		ratio.Valid = true
		ratio.Value = r.Summary.ReqPerSec / base.Summary.ReqPerSec
		ratio.Met = ratio.Value >= minimum
		ratio.Note = fmt.Sprintf("%.0f ÷ %.0f req/s", r.Summary.ReqPerSec, base.Summary.ReqPerSec)
	}
	return ratio
}

// ms formats a duration as milliseconds with microsecond precision.
func ms(d time.Duration) string {
	return fmt.Sprintf("%.3f ms", float64(d)/float64(time.Millisecond))
}

// MinPublishingRatio: Drover's saturated req/s with usage publishing on ÷
// with it off, everything on the same cores (issue 16 §1's target since
// capture became crash-exact).
const MinPublishingRatio = 0.97

// MinPublishingCapacity: the proxy's own CPU per request off ÷ on, what a
// replica loses when NATS runs elsewhere.
const MinPublishingCapacity = 0.95

// PublishingRatios compares drover+nats with drover for every closed-loop
// mode: saturated throughput, with everything (the NATS server included)
// on the same cores; and, when the tool started both proxies, the proxy's
// own CPU per request off ÷ on, which is what publishing costs a replica's
// capacity when NATS runs elsewhere, as deployed.
func PublishingRatios(rows []suite.Row) []Ratio {
	by := index(rows)
	var out []Ratio
	for _, r := range rows {
		if r.Target != suite.DroverNATS || !r.Closed {
			continue
		}
		goal := fmt.Sprintf(">= %.2f", MinPublishingRatio)
		off, ok := by[key{suite.Drover, r.Mode, r.Workload}]
		out = append(out, throughput(r, off, ok, "drover", goal, MinPublishingRatio))
		capacity, measured := cpuRatio(r, off, ok, "proxy capacity (CPU/request off ÷ on)",
			fmt.Sprintf(">= %.2f", MinPublishingCapacity), MinPublishingCapacity)
		if !measured {
			continue
		}
		capacity.Note = "proxy " + capacity.Note
		if r.Summary.SideCPUPerReq > 0 {
			capacity.Note += fmt.Sprintf("; NATS server %s per request", us(r.Summary.SideCPUPerReq))
		}
		out = append(out, capacity)
	}
	return out
}

// cpuRatio is base's CPU per request ÷ r's: what r costs in a process's
// capacity against base. measured is false unless both were measured.
func cpuRatio(r, base suite.Row, found bool, metric, goal string, minimum float64) (ratio Ratio, measured bool) {
	if !found || r.Summary.CPUPerReq <= 0 || base.Summary.CPUPerReq <= 0 {
		return Ratio{}, false
	}
	ratio = Ratio{Workload: r.Workload, Mode: r.Mode, Metric: metric, Goal: goal, Valid: true}
	ratio.Value = float64(base.Summary.CPUPerReq) / float64(r.Summary.CPUPerReq)
	ratio.Met = ratio.Value >= minimum
	ratio.Note = fmt.Sprintf("%s → %s per request", us(base.Summary.CPUPerReq), us(r.Summary.CPUPerReq))
	return ratio, true
}

// us formats a duration as microseconds.
func us(d time.Duration) string {
	return fmt.Sprintf("%.1f µs", float64(d)/float64(time.Microsecond))
}

// MinBaselineRatio: the current Drover's saturated req/s ÷ the baseline
// build's, and the baseline's CPU per request ÷ the current one's.
const MinBaselineRatio = 0.97

// BaselineRatios compares drover with baseline (an earlier build of
// drover-proxy) for every closed-loop mode: throughput, and the proxy's own
// CPU per request baseline ÷ current where both were measured.
func BaselineRatios(rows []suite.Row) []Ratio {
	by := index(rows)
	goal := fmt.Sprintf(">= %.2f", MinBaselineRatio)
	var out []Ratio
	for _, r := range rows {
		if r.Target != suite.Drover || !r.Closed {
			continue
		}
		base, ok := by[key{suite.Baseline, r.Mode, r.Workload}]
		if !ok {
			continue
		}
		out = append(out, throughput(r, base, ok, "baseline", goal, MinBaselineRatio))
		if cpu, measured := cpuRatio(r, base, ok, "CPU/request baseline ÷ current", goal, MinBaselineRatio); measured {
			out = append(out, cpu)
		}
	}
	return out
}
