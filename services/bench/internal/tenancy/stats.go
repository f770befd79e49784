package tenancy

import (
	"math"
	"slices"
	"time"
)

// Percentile returns the q-quantile (0..1) of ds by the nearest-rank
// method, or 0 for none.
func Percentile(ds []time.Duration, q float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	i := int(math.Ceil(q*float64(len(s)))) - 1
	return s[min(max(i, 0), len(s)-1)]
}

// Jain is Jain's fairness index of xs: (Σx)² / (n·Σx²), 1 when all are
// equal, 1/n when one takes everything. Weighted fairness divides each
// allocation by its weight first. It is 0 for no allocations.
func Jain(xs []float64) float64 {
	var sum, sq float64
	for _, x := range xs {
		sum += x
		sq += x * x
	}
	if sq == 0 {
		return 0
	}
	return sum * sum / (float64(len(xs)) * sq)
}

// ShareError is, for each key, how far its share of counts is from its
// share of weights, relative to the latter: |share/want − 1|; 1 when
// nothing was counted or a weight is 0.
func ShareError(counts, weights []float64) []float64 {
	var cs, ws float64
	for i := range counts {
		cs += counts[i]
		ws += weights[i]
	}
	out := make([]float64, len(counts))
	for i := range counts {
		if cs == 0 || ws == 0 || weights[i] == 0 {
			out[i] = 1 // nothing to share: as far off as a share of 0
			continue
		}
		out[i] = math.Abs((counts[i]/cs)/(weights[i]/ws) - 1)
	}
	return out
}

// Window counts completions per key in one stretch of time during which
// every key had requests outstanding throughout.
type Window struct {
	Start  time.Time
	Counts map[string]int
}

// BacklogWindows cuts [from, to) into windows of width w and counts the
// replies of each key in keys that completed in each window, keeping only
// windows in which every key had at least minOutstanding requests
// outstanding at every moment (checked at every request boundary), so that
// each key could have used every slot it was given.
func BacklogWindows(rs []Result, keys []string, minOutstanding int, from, to time.Time, w time.Duration) []Window {
	var out []Window
	for s := from; !s.Add(w).After(to); s = s.Add(w) {
		e := s.Add(w)
		win := Window{Start: s, Counts: map[string]int{}}
		ok := true
		for _, k := range keys {
			if minOutstandingIn(rs, k, s, e) < minOutstanding {
				ok = false
				break
			}
		}
		if !ok {
			continue
		}
		for _, r := range rs {
			if r.OK() && !r.End().Before(s) && r.End().Before(e) {
				win.Counts[r.Key]++
			}
		}
		out = append(out, win)
	}
	return out
}

// minOutstandingIn is the fewest of key's requests outstanding at any
// moment in [s, e): the count is checked at s and just after every start
// or end inside the window.
func minOutstandingIn(rs []Result, key string, s, e time.Time) int {
	at := func(t time.Time) int {
		n := 0
		for _, r := range rs {
			if r.Key == key && !r.Start.After(t) && r.End().After(t) {
				n++
			}
		}
		return n
	}
	least := at(s)
	for _, r := range rs {
		if r.Key != key {
			continue
		}
		for _, t := range []time.Time{r.Start, r.End()} {
			if !t.Before(s) && t.Before(e) {
				least = min(least, at(t))
			}
		}
	}
	return least
}
