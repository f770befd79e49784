package report

import (
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"strings"
	"time"

	"github.com/droverhq/drover/services/bench/internal/suite"
)

// Document is the whole result of a benchmark run, as written by -json.
type Document struct {
	Started  time.Time         `json:"started"`
	LoadAvg  float64           `json:"load_avg_1m"`
	Settings map[string]string `json:"settings"`
	Rows     []suite.Row       `json:"rows"`
	Ratios   []Ratio           `json:"ratios"`
	// Publishing compares drover+nats with drover (-drover-nats).
	Publishing []Ratio `json:"publishing,omitempty"`
	// Baseline compares drover with an earlier build of it (-baseline).
	Baseline []Ratio `json:"baseline,omitempty"`
}

// JSON writes the document, indented.
func JSON(w io.Writer, d Document) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	if err := enc.Encode(d); err != nil {
		return fmt.Errorf("writing JSON report: %w", err)
	}
	return nil
}

// Markdown writes the results table, the ratio table, and any error kinds.
func Markdown(w io.Writer, d Document) error {
	var b strings.Builder
	fmt.Fprintf(&b, "## drover-bench %s\n\n", d.Started.Format(time.RFC3339))
	keys := make([]string, 0, len(d.Settings))
	for k := range d.Settings {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		fmt.Fprintf(&b, "%s=%s ", k, d.Settings[k])
	}
	fmt.Fprintf(&b, "load1=%.2f\n\n", d.LoadAvg)

	b.WriteString("| target | mode | workload | req/s | p50 ms | p99 ms | errors | CPU µs/req |\n")
	b.WriteString("|---|---|---|---:|---:|---:|---:|---:|\n")
	for _, r := range d.Rows {
		s := r.Summary
		cpu := ""
		if s.CPUPerReq > 0 {
			cpu = fmt.Sprintf("%.1f", float64(s.CPUPerReq)/float64(time.Microsecond))
		}
		if s.SideCPUPerReq > 0 {
			cpu += fmt.Sprintf(" + NATS %.1f", float64(s.SideCPUPerReq)/float64(time.Microsecond))
		}
		fmt.Fprintf(&b, "| %s | %s | %s | %.0f | %.3f | %.3f | %d | %s |\n",
			r.Target, r.Mode, r.Workload, s.ReqPerSec, msf(s.P50), msf(s.P99), s.Errors, cpu)
	}

	ratioTable(&b, "drover ÷ bare", d.Ratios)
	ratioTable(&b, "drover+nats ÷ drover", d.Publishing)
	ratioTable(&b, "drover ÷ baseline", d.Baseline)

	var errs []string
	for _, r := range d.Rows {
		for k, n := range r.Kinds {
			errs = append(errs, fmt.Sprintf("- %s %s %s: %d × %s", r.Target, r.Mode, r.Workload, n, k))
		}
	}
	if len(errs) > 0 {
		sort.Strings(errs)
		b.WriteString("\nErrors (all rounds):\n")
		b.WriteString(strings.Join(errs, "\n"))
		b.WriteString("\n")
	}
	var lags []string
	for _, r := range d.Rows {
		if r.MaxLag > 10*time.Millisecond {
			lags = append(lags, fmt.Sprintf("- %s %s %s: %v", r.Target, r.Mode, r.Workload, r.MaxLag.Round(time.Millisecond)))
		}
	}
	if len(lags) > 0 {
		b.WriteString("\nWarning: the load generator fell behind its open-loop schedule (latencies include the lag; the machine is too busy):\n")
		b.WriteString(strings.Join(lags, "\n"))
		b.WriteString("\n")
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// ratioTable writes one comparison table, if there is anything in it.
func ratioTable(b *strings.Builder, title string, ratios []Ratio) {
	if len(ratios) == 0 {
		return
	}
	fmt.Fprintf(b, "\n| workload | mode | %s | value | goal | met | detail |\n", title)
	b.WriteString("|---|---|---|---:|---|---|---|\n")
	for _, r := range ratios {
		value, met := "n/a", "n/a"
		if r.Valid {
			value = fmt.Sprintf("%.2f", r.Value)
			met = "no"
			if r.Met {
				met = "yes"
			}
		}
		fmt.Fprintf(b, "| %s | %s | %s | %s | %s | %s | %s |\n", r.Workload, r.Mode, r.Metric, value, r.Goal, met, r.Note)
	}
}

func msf(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
