package tenancy

import (
	"encoding/json"
	"fmt"
	"io"
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
	}
	for _, f := range r.Failures {
		fmt.Fprintf(w, "not run: %s\n", f)
	}
}
