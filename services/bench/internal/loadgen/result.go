package loadgen

import (
	"math"
	"slices"
	"time"
)

// Result is what one run measured. Latencies are of successful requests only,
// so fast failures cannot flatter the percentiles.
type Result struct {
	OK     int            `json:"ok"`
	Errors int            `json:"errors"`
	Kinds  map[string]int `json:"error_kinds,omitempty"`
	// Elapsed is the measurement window: for an open loop the schedule (or
	// longer, if dispatch fell behind it), for a closed loop the time until
	// the last worker finished.
	Elapsed time.Duration `json:"elapsed_ns"`
	// MaxLag is how far behind its schedule the open-loop dispatcher fell
	// at worst; large values mean the load generator itself was starved.
	MaxLag    time.Duration   `json:"max_dispatch_lag_ns,omitempty"`
	Latencies []time.Duration `json:"-"`
}

// Summary is the handful of numbers a report prints.
type Summary struct {
	ReqPerSec float64       `json:"req_per_sec"`
	P50       time.Duration `json:"p50_ns"`
	P99       time.Duration `json:"p99_ns"`
	OK        int           `json:"ok"`
	Errors    int           `json:"errors"`
	// CPUPerReq is the CPU time (user + system) the target's own process
	// spent per completed request during the run, and SideCPUPerReq that of
	// a process it depends on (the NATS server of drover+nats); 0 when not
	// measured (a target the tool did not start).
	CPUPerReq     time.Duration `json:"cpu_per_req_ns,omitempty"`
	SideCPUPerReq time.Duration `json:"side_cpu_per_req_ns,omitempty"`
}

// Summarize sorts the latencies in place and computes the summary.
func (r *Result) Summarize() Summary {
	slices.Sort(r.Latencies)
	s := Summary{OK: r.OK, Errors: r.Errors,
		P50: Percentile(r.Latencies, 0.50),
		P99: Percentile(r.Latencies, 0.99)}
	if r.Elapsed > 0 {
		s.ReqPerSec = float64(r.OK) / r.Elapsed.Seconds()
	}
	return s
}

// Percentile returns the nearest-rank percentile p (0..1] of sorted samples,
// or 0 when there are none.
func Percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(math.Ceil(p*float64(len(sorted)))) - 1
	i = max(0, min(i, len(sorted)-1))
	return sorted[i]
}

// merge folds another partial result (one worker's) into r.
func (r *Result) merge(o *Result) {
	r.OK += o.OK
	r.Errors += o.Errors
	r.Latencies = append(r.Latencies, o.Latencies...)
	for k, n := range o.Kinds {
		r.addKind(k, n)
	}
}

// record counts one finished request.
func (r *Result) record(lat time.Duration, failure string) {
	if failure == "" {
		r.OK++
		r.Latencies = append(r.Latencies, lat)
		return
	}
	r.Errors++
	r.addKind(failure, 1)
}

func (r *Result) addKind(k string, n int) {
	if r.Kinds == nil {
		r.Kinds = map[string]int{}
	}
	r.Kinds[k] += n
}
