package routingbench

import (
	"slices"
	"sort"
	"time"
)

// StepStats summarises the requests sent during one step of the ramp.
type StepStats struct {
	Offered float64 `json:"offered_rps"` // the step's rate
	Sent    int     `json:"sent"`
	Errors  int     `json:"errors"`
	// Throughput is requests completed during the step's window per second.
	Throughput float64 `json:"throughput_rps"`
	// HitRate is the share of prompt tokens the backends served from cache.
	HitRate float64 `json:"token_hit_rate"`
	TTFTP50 Millis  `json:"ttft_p50_ms"`
	TTFTP99 Millis  `json:"ttft_p99_ms"`
	// Cold counts the requests whose backend evaluated more than half
	// their prompt (a miss of the group's system prompt, as the backend
	// tells it); set beside Slotted, it shows how often the slot model
	// believed a hit that the backend did not serve.
	Cold int `json:"cold"`
	// Slotted is what Drover's slot model held for the requests granted
	// during the step (drover_affinity_slotted_total: one replica with
	// prefix or session), by reason, and by reason + "/queue" or "/warm"
	// for those that waited.
	Slotted map[string]int64 `json:"slotted,omitempty"`
	// ErrorKinds counts failures by cause.
	ErrorKinds map[string]int `json:"error_kinds,omitempty"`
}

// Millis is a duration written as milliseconds in JSON.
type Millis float64

// Ms converts d.
func Ms(d time.Duration) Millis { return Millis(float64(d) / float64(time.Millisecond)) }

// Summarize groups samples into steps by send time (requests sent after the
// last step count in it) and summarises each.
func Summarize(steps []Step, samples []Sample) []StepStats {
	out := make([]StepStats, len(steps))
	bounds := make([]time.Duration, len(steps)) // end of each step
	var end time.Duration
	for i, st := range steps {
		end += st.Duration
		bounds[i] = end
		out[i].Offered = st.Rate
	}
	ttfts := make([][]time.Duration, len(steps))
	prompt := make([]int64, len(steps))
	uncached := make([]int64, len(steps))
	completed := make([]int, len(steps))
	stepOf := func(t time.Duration) int {
		return min(sort.Search(len(bounds), func(i int) bool { return t < bounds[i] }), len(steps)-1)
	}
	for _, s := range samples {
		i := stepOf(s.Sent)
		out[i].Sent++
		if s.Err != "" {
			out[i].Errors++
			if out[i].ErrorKinds == nil {
				out[i].ErrorKinds = map[string]int{}
			}
			out[i].ErrorKinds[s.Err]++
			continue
		}
		ttfts[i] = append(ttfts[i], s.TTFT)
		if 2*s.UncachedTokens > s.PromptTokens {
			out[i].Cold++
		}
		prompt[i] += s.PromptTokens
		uncached[i] += s.UncachedTokens
		if s.Finished < end { // completions after the ramp count in no window
			completed[stepOf(s.Finished)]++
		}
	}
	for i := range out {
		if prompt[i] > 0 {
			out[i].HitRate = 1 - float64(uncached[i])/float64(prompt[i])
		}
		out[i].TTFTP50 = Ms(Percentile(ttfts[i], 0.50))
		out[i].TTFTP99 = Ms(Percentile(ttfts[i], 0.99))
		out[i].Throughput = float64(completed[i]) / steps[i].Duration.Seconds()
	}
	return out
}

// Percentile is the nearest-rank q-quantile of ds (0 for none); ds is sorted
// in place.
func Percentile(ds []time.Duration, q float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	slices.Sort(ds)
	rank := int(q*float64(len(ds))+0.999999) - 1
	return ds[min(max(rank, 0), len(ds)-1)]
}

// Total sums every step: the run's token hit rate, TTFT over all requests.
func Total(samples []Sample) (hitRate float64, p50, p99 time.Duration, errs int) {
	var prompt, uncached int64
	var ttfts []time.Duration
	for _, s := range samples {
		if s.Err != "" {
			errs++
			continue
		}
		prompt += s.PromptTokens
		uncached += s.UncachedTokens
		ttfts = append(ttfts, s.TTFT)
	}
	if prompt > 0 {
		hitRate = 1 - float64(uncached)/float64(prompt)
	}
	return hitRate, Percentile(ttfts, 0.5), Percentile(ttfts, 0.99), errs
}

// Sustained is the highest throughput among steps whose TTFT p99 stays
// under limit and that had no errors, and that step's index (-1 if none).
func Sustained(steps []StepStats, limit time.Duration) (float64, int) {
	best, at := 0.0, -1
	for i, s := range steps {
		if s.Sent > 0 && s.Errors == 0 && float64(s.TTFTP99) < float64(Ms(limit)) && s.Throughput > best {
			best, at = s.Throughput, i
		}
	}
	return best, at
}
