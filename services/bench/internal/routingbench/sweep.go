package routingbench

import (
	"fmt"
	"io"
	"strings"
)

// WriteSweep writes one line per run of a sensitivity sweep (the same
// setups run once per value of a workload parameter, drover-bench-routing
// -sweep-groups) and replica count: how prefix affinity's hit rate and
// TTFT compare with least_loaded's as the parameter moves. param names the
// Settings key that varies.
func WriteSweep(w io.Writer, param string, docs []Document) {
	var b strings.Builder
	fmt.Fprintf(&b, "## Sweep over %s\n\n", param)
	fmt.Fprintf(&b, "| %s | replicas | hit rate least_loaded → prefix | ÷ | p50 TTFT least_loaded ÷ prefix (median of steps) | p99 TTFT prefix ÷ least_loaded | req/s at p99 < 2 s, least_loaded → prefix | load at start |\n", param)
	fmt.Fprintln(&b, "|---|---|---|---|---|---|---|---|")
	for _, d := range docs {
		d.CheckTargets()
		for _, n := range []int{1, 3} {
			base, pre := d.find("least_loaded", n, true), d.find("prefix", n, true)
			if base == nil || pre == nil {
				continue
			}
			at := fmt.Sprintf("%d replica(s)", n)
			fmt.Fprintf(&b, "| %s | %d | %.1f %% → %.1f %% | %.2f | %s | %s | %.1f → %.1f | %.1f |\n", d.Settings[param], n,
				100*base.HitRate, 100*pre.HitRate, ratio(pre.HitRate, base.HitRate),
				d.targetValue("p50 TTFT", at), d.targetValue("p99 TTFT", at), base.Sustained, pre.Sustained, d.LoadAvg)
		}
	}
	io.WriteString(w, b.String())
}

// targetValue is the value of the target whose name starts with name and
// whose note starts with at, formatted ("-" when not checked).
func (d Document) targetValue(name, at string) string {
	for _, t := range d.Targets {
		if strings.HasPrefix(t.Name, name) && strings.HasPrefix(t.Note, at) {
			return fmt.Sprintf("%.2f", t.Value)
		}
	}
	return "-"
}
