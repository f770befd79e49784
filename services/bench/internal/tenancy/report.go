package tenancy

import (
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"time"
)

// Report is a whole run, as written to bench-tenancy.json.
type Report struct {
	Started   time.Time         `json:"started"`
	LoadAvg   float64           `json:"load_avg_1m"`
	Settings  map[string]string `json:"settings"`
	Overshoot []OvershootResult `json:"overshoot,omitempty"`
	Neighbour *NeighbourResult  `json:"neighbour,omitempty"`
	Equal     *SharesResult     `json:"shares_equal,omitempty"`
	Weighted  *SharesResult     `json:"shares_weighted,omitempty"`
	Priority  *PriorityResult   `json:"priority,omitempty"`
	Ideal     *IdealSweep       `json:"ideal_sweep,omitempty"`
	Failures  []string          `json:"failures,omitempty"` // scenarios that could not run, and why
}

// WriteJSON writes r indented.
func (r Report) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(r)
}

func verdict(ok bool) string {
	if ok {
		return "met"
	}
	return "**missed**"
}

// WriteMarkdown prints the results as Markdown tables, one per scenario,
// each row with its target and whether it was met.
func (r Report) WriteMarkdown(w io.Writer) {
	fmt.Fprintf(w, "drover-bench-tenancy, %s, load average %.2f\n\n", r.Started.UTC().Format(time.RFC3339), r.LoadAvg)
	if len(r.Overshoot) > 0 {
		fmt.Fprintln(w, "| overshoot: admission | budget | served | past the budget | in requests | completed | refused | target (≤ 1 request per replica and < 5 %) |")
		fmt.Fprintln(w, "|---|---:|---:|---:|---:|---:|---:|---|")
		for _, o := range r.Overshoot {
			fmt.Fprintf(w, "| %s | %d | %d | %d (%.1f %%) | %.1f | %d | %d | %s |\n",
				o.Admission, o.Budget, o.Served, o.Over, o.OverPercent, o.OverPerReq, o.Completed, o.Refused, verdict(o.Passed))
		}
		fmt.Fprintln(w)
	}
	if n := r.Neighbour; n != nil {
		fmt.Fprintln(w, "| fairness: B's queue wait | requests | p50 | p99 | target (p99 ≤ 1.5 × alone) |")
		fmt.Fprintln(w, "|---|---:|---:|---:|---|")
		fmt.Fprintf(w, "| B alone, %.0f/s | %d | %.1f ms | %.1f ms | |\n", n.RateB, n.BAlone.Requests, n.BAlone.P50, n.BAlone.P99)
		fmt.Fprintf(w, "| B beside A at %.0f/s | %d | %.1f ms | %.1f ms | %.2f × alone: %s |\n", n.RateA, n.BWithA.Requests, n.BWithA.P50, n.BWithA.P99, n.P99Ratio, verdict(n.Passed))
		fmt.Fprintf(w, "| A (%d of %d completed) | %d | %.1f ms | %.1f ms | |\n\n", n.A.Completed, n.A.Requests, n.A.Requests, n.A.P50, n.A.P99)
		writeIdeal(w, "B", "A", n.Ideal)
	}
	if r.Equal != nil || r.Weighted != nil {
		fmt.Fprintln(w, "| fairness: slots, both backlogged | weights A:B | conns A:B | windows | completions A:B | share A:B | Jain (min window) | target |")
		fmt.Fprintln(w, "|---|---|---|---:|---|---|---|---|")
		for _, s := range []*SharesResult{r.Equal, r.Weighted} {
			if s == nil {
				continue
			}
			target := "Jain ≥ 0.95"
			if s.Weights["a"] != s.Weights["b"] {
				target = fmt.Sprintf("shares within 10 %% of weights (off by %.0f %% / %.0f %%)", 100*s.ShareErr["a"], 100*s.ShareErr["b"])
			}
			fmt.Fprintf(w, "| | %d:%d | %d:%d | %d | %d:%d | %.2f:%.2f | %.3f (%.3f) | %s: %s |\n",
				s.Weights["a"], s.Weights["b"], s.Conns["a"], s.Conns["b"], s.Windows, s.Slots["a"], s.Slots["b"],
				s.Share["a"], s.Share["b"], s.Jain, s.JainMin, target, verdict(s.Passed))
		}
		fmt.Fprintln(w)
	}
	if p := r.Priority; p != nil {
		fmt.Fprintln(w, "| priority: interactive queue wait | requests | p50 | p99 | target (p99 ≤ 1.5 × alone) |")
		fmt.Fprintln(w, "|---|---:|---:|---:|---|")
		fmt.Fprintf(w, "| interactive alone, %.0f/s | %d | %.1f ms | %.1f ms | |\n", p.Rate, p.Alone.Requests, p.Alone.P50, p.Alone.P99)
		fmt.Fprintf(w, "| beside a batch flood (%d conns) | %d | %.1f ms | %.1f ms | %.2f × alone: %s |\n", p.BatchConns, p.WithBatch.Requests, p.WithBatch.P50, p.WithBatch.P99, p.P99Ratio, verdict(p.Passed))
		fmt.Fprintf(w, "| batch (%.0f %% of replies during the flood) | %d | %.1f ms | %.1f ms | |\n\n", 100*p.BatchShare, p.Batch.Requests, p.Batch.P50, p.Batch.P99)
		writeIdeal(w, "interactive", "batch", p.Ideal)
	}
	if s := r.Ideal; s != nil {
		for _, part := range []struct {
			name, light, heavy, draws string
			rows                      []SweepRow
		}{
			{"neighbour", "B", "A", "A's arrival seeds", s.Neighbour},
			{"priority", "interactive", "batch", "starts of the flood", s.Priority},
		} {
			fmt.Fprintf(w, "| ideal %s, over %s: slots kept for %s | p99 ratio: p10 | p50 | p90 | draws meeting 1.5 × | %s served (mean) |\n", part.name, part.draws, part.light, part.heavy)
			fmt.Fprintln(w, "|---:|---:|---:|---:|---:|---:|")
			for _, row := range part.rows {
				fmt.Fprintf(w, "| %s | %.2f | %.2f | %.2f | %d of %d | %.0f |\n", keepLabel(row.Keep, row.Peak, row.Preempt), row.RatioP10, row.RatioP50, row.RatioP90, row.Met, row.Draws, row.HeavyServed)
			}
			fmt.Fprintln(w)
		}
	}
	for _, f := range r.Failures {
		fmt.Fprintf(w, "not run: %s\n", f)
	}
}

// keepLabel names a row of the ideal model.
func keepLabel(keep int, peak, preempt bool) string {
	switch {
	case preempt:
		return "none, preempting (stop, start over)"
	case peak:
		return "its peak in the last " + idealPeak.String()
	}
	return strconv.Itoa(keep)
}

// writeIdeal prints the model's figures for the scenario just printed: the
// bound that the light key's wait of any scheduler that cannot preempt is
// held to on the same arrivals, and what preemption would give.
func writeIdeal(w io.Writer, light, heavy string, rows []IdealResult) {
	if len(rows) == 0 {
		return
	}
	fmt.Fprintf(w, "| ideal scheduler, same arrivals: slots kept for %s | %s p99 alone | beside %s | ratio | %s served (stopped) |\n", light, light, heavy, heavy)
	fmt.Fprintln(w, "|---:|---:|---:|---:|---:|")
	for _, r := range rows {
		fmt.Fprintf(w, "| %s | %.1f ms | %.1f ms | %.2f × | %d (%d) |\n", keepLabel(r.Keep, r.Peak, r.Preempt), r.AloneP99, r.BesideP99, r.Ratio, r.HeavyServed, r.Stopped)
	}
	fmt.Fprintln(w)
}
