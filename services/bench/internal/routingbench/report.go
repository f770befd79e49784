package routingbench

import (
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"
)

// Document is a whole run, as -json writes it.
type Document struct {
	Started  time.Time         `json:"started"`
	LoadAvg  float64           `json:"load_avg_1m"`
	Settings map[string]string `json:"settings"`
	Results  []Result          `json:"results"`
	Targets  []Target          `json:"targets"`
	Failures []string          `json:"failures,omitempty"`
}

// Target is one of issue 15's goals, checked on this run.
type Target struct {
	Name  string  `json:"name"`
	Goal  string  `json:"goal"`
	Value float64 `json:"value"`
	Met   bool    `json:"met"`
	Note  string  `json:"note,omitempty"`
}

// WriteJSON writes d indented.
func (d Document) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(d)
}

func (d Document) find(strategy string, replicas int, share bool) *Result {
	for i := range d.Results {
		r := &d.Results[i]
		if r.Strategy == strategy && r.Replicas == replicas && (strategy != "prefix" || r.Share == share) {
			return r
		}
	}
	return nil
}

// comparable are the steps where least_loaded kept TTFT p99 under 2 s
// with no errors: where a TTFT comparison means more than queueing.
func comparable(base *Result) []int {
	var out []int
	for i, s := range base.Steps {
		if s.Errors == 0 && s.Sent > 0 && float64(s.TTFTP99) < float64(Ms(2*time.Second)) {
			out = append(out, i)
		}
	}
	return out
}

// stepRatios is f(base step, other step) at each of steps, their median
// and a note listing them by offered rate.
func stepRatios(base, other *Result, steps []int, f func(b, o StepStats) float64) (float64, string) {
	var vals []float64
	var note []string
	for _, i := range steps {
		v := f(base.Steps[i], other.Steps[i])
		vals = append(vals, v)
		note = append(note, fmt.Sprintf("%g: %.2f", base.Steps[i].Offered, v))
	}
	sorted := slices.Clone(vals)
	slices.Sort(sorted)
	if len(sorted) == 0 {
		return 0, "no step below 2 s p99"
	}
	return sorted[len(sorted)/2], "median over steps (req/s: ratio) " + strings.Join(note, ", ")
}

// CheckTargets compares prefix with least_loaded at each replica count, and
// three sharing replicas with one.
func (d *Document) CheckTargets() {
	d.Targets = nil
	for _, n := range []int{1, 3} {
		base, pre := d.find("least_loaded", n, true), d.find("prefix", n, true)
		if base == nil || pre == nil || len(base.Steps) == 0 || len(pre.Steps) != len(base.Steps) {
			continue
		}
		steps := comparable(base)
		p50, p50Note := stepRatios(base, pre, steps, func(b, o StepStats) float64 { return ratio(float64(b.TTFTP50), float64(o.TTFTP50)) })
		p99, p99Note := stepRatios(base, pre, steps, func(b, o StepStats) float64 { return ratio(float64(o.TTFTP99), float64(b.TTFTP99)) })
		at := fmt.Sprintf("%d replica(s), ", n)
		d.Targets = append(d.Targets,
			Target{Name: "p50 TTFT, least_loaded / prefix", Goal: ">= 2", Value: p50, Met: p50 >= 2, Note: at + p50Note},
			Target{Name: "token hit rate, prefix / least_loaded", Goal: ">= 3", Value: ratio(pre.HitRate, base.HitRate),
				Met: pre.HitRate >= 3*base.HitRate, Note: fmt.Sprintf("%d replica(s), whole ramp: %.1f %% vs %.1f %%", n, 100*pre.HitRate, 100*base.HitRate)},
			Target{Name: "p99 TTFT, prefix / least_loaded", Goal: "<= 1", Value: p99, Met: steps != nil && p99 <= 1, Note: at + p99Note},
			Target{Name: "throughput at TTFT p99 < 2 s, prefix / least_loaded", Goal: ">= 1", Value: ratio(pre.Sustained, base.Sustained),
				Met: pre.Sustained >= base.Sustained, Note: fmt.Sprintf("%d replica(s): %.1f vs %.1f req/s", n, pre.Sustained, base.Sustained)},
		)
	}
	one, shared, unshared := d.find("prefix", 1, true), d.find("prefix", 3, true), d.find("prefix", 3, false)
	if one != nil && shared != nil {
		t := Target{Name: "token hit rate, 3 replicas sharing / 1 replica", Goal: ">= 0.9", Value: ratio(shared.HitRate, one.HitRate),
			Met: shared.HitRate >= 0.9*one.HitRate}
		if unshared != nil {
			t.Note = fmt.Sprintf("without sharing: %.2f", ratio(unshared.HitRate, one.HitRate))
		}
		d.Targets = append(d.Targets, t)
	}
}

func ratio(a, b float64) float64 {
	if b == 0 {
		return 0
	}
	return a / b
}

// WriteMarkdown writes the results and targets as tables.
func (d Document) WriteMarkdown(w io.Writer) {
	var b strings.Builder
	fmt.Fprintf(&b, "## drover-bench-routing %s (load average %.2f)\n\n", d.Started.UTC().Format(time.RFC3339), d.LoadAvg)
	fmt.Fprintln(&b, "| setup | token hit rate | TTFT p50 / p99 whole ramp (ms) | req/s at p99 < 2 s | requests per backend max / min | affinity hit / miss / override | sharing B/req, msg/s | errors |")
	fmt.Fprintln(&b, "|---|---|---|---|---|---|---|---|")
	for _, r := range d.Results {
		sus := "none"
		if r.SustainedAt > 0 {
			sus = fmt.Sprintf("%.1f (offered %g)", r.Sustained, r.SustainedAt)
		}
		picks, share := "-", "-"
		if len(r.Picks) > 0 {
			picks = fmt.Sprintf("%d / %d / %d", r.Picks["hit"], r.Picks["miss"], r.Picks["override"])
		}
		if r.ShareBytesPerRequest > 0 {
			share = fmt.Sprintf("%.0f, %.1f", r.ShareBytesPerRequest, r.ShareMessagesPerSecond)
		}
		fmt.Fprintf(&b, "| %s | %.1f %% | %.0f / %.0f | %s | %d / %d | %s | %s | %d |\n", r.Name, 100*r.HitRate,
			r.TTFTP50, r.TTFTP99, sus, r.LoadMax, r.LoadMin, picks, share, r.Errors)
	}
	if len(d.Targets) > 0 {
		fmt.Fprintln(&b, "\n| target | goal | value | met | |\n|---|---|---|---|---|")
		for _, t := range d.Targets {
			met := "no"
			if t.Met {
				met = "yes"
			}
			fmt.Fprintf(&b, "| %s | %s | %.2f | %s | %s |\n", t.Name, t.Goal, t.Value, met, t.Note)
		}
	}
	fmt.Fprintln(&b, "\nPer step (offered req/s: hit rate, TTFT p50/p99 ms, completed req/s):")
	for _, r := range d.Results {
		fmt.Fprintf(&b, "- %s:", r.Name)
		for _, s := range r.Steps {
			fmt.Fprintf(&b, " %g: %.0f %%, %.0f/%.0f, %.1f;", s.Offered, 100*s.HitRate, s.TTFTP50, s.TTFTP99, s.Throughput)
			if s.Errors > 0 {
				fmt.Fprintf(&b, " (%d errors)", s.Errors)
			}
		}
		fmt.Fprintln(&b)
	}
	var slotted []string
	for _, r := range d.Results {
		for _, s := range r.Steps {
			if len(s.Slotted) > 0 {
				slotted = append(slotted, r.Name)
				break
			}
		}
	}
	if len(slotted) > 0 {
		fmt.Fprintln(&b, "\nWhat Drover's slot model held for each request granted (per step: hit / elsewhere / busy / evicted / new; of them queued; waited for a warm slot), and how many requests the backends evaluated more than half of (cold):")
		for _, r := range d.Results {
			if !slices.Contains(slotted, r.Name) {
				continue
			}
			fmt.Fprintf(&b, "- %s:", r.Name)
			for _, s := range r.Steps {
				m := s.Slotted
				fmt.Fprintf(&b, " %g: %d/%d/%d/%d/%d (q %d/%d/%d/%d/%d; w %d/%d/%d/%d/%d; cold %d);", s.Offered, m["hit"], m["elsewhere"], m["busy"], m["evicted"], m["new"],
					m["hit/queue"], m["elsewhere/queue"], m["busy/queue"], m["evicted/queue"], m["new/queue"],
					m["hit/warm"], m["elsewhere/warm"], m["busy/warm"], m["evicted/warm"], m["new/warm"], s.Cold)
			}
			fmt.Fprintln(&b)
		}
	}
	for _, f := range d.Failures {
		fmt.Fprintf(&b, "\nfailed: %s\n", f)
	}
	io.WriteString(w, b.String())
}
