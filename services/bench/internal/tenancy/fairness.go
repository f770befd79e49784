package tenancy

import (
	"context"
	"fmt"
	"hash/fnv"
	"math"
	"sort"
	"strconv"
	"time"
)

// SaturationSpec is the fleet the fairness and priority scenarios saturate:
// Backends fake backends with Cap slots each for the whole fleet, every
// request holding a slot for Req.Output chunks of ChunkDelay.
type SaturationSpec struct {
	Replicas, Backends, Cap int
	ChunkDelay              time.Duration
	MaxPerKey               int
	Headroom                int // routing.queue.interactive_headroom; negative keeps the default
	Req                     Request
	// OutputSpread, in the neighbour scenario, draws each request's output
	// uniformly from Req.Output × (1 ± OutputSpread), the same draw for
	// the same request in every run (0: every request the same length).
	OutputSpread float64
	Duration     time.Duration // each phase
	Warmup       time.Duration // left out of the closed-loop phases' windows
	Window       time.Duration // Jain's index windows
}

// spread is request i of key's shape: Req with its output drawn within
// OutputSpread (a hash of key and i, so every run draws alike).
func (s SaturationSpec) spread(key string, i int) Request {
	r := s.Req
	if s.OutputSpread <= 0 {
		return r
	}
	h := fnv.New64a()
	fmt.Fprintf(h, "%s/%d", key, i)
	x := h.Sum64() // FNV's high bits vary little over short keys: mix them (splitmix64's finalizer)
	x = (x ^ x>>30) * 0xbf58476d1ce4e5b9
	x = (x ^ x>>27) * 0x94d049bb133111eb
	x ^= x >> 31
	u := float64(x>>11) / (1 << 53) // uniform in [0, 1)
	r.Output = max(1, int(math.Round(float64(r.Output)*(1-s.OutputSpread+2*s.OutputSpread*u))))
	return r
}

// Slots is how many requests the fleet serves at once.
func (s SaturationSpec) Slots() int { return s.Backends * s.Cap }

// Service is roughly how long one request holds a slot.
func (s SaturationSpec) Service() time.Duration { return time.Duration(s.Req.Output) * s.ChunkDelay }

func (s SaturationSpec) fleet(name string, keys []Key) FleetSpec {
	return FleetSpec{
		Name: name, Replicas: s.Replicas, Backends: s.Backends, Cap: s.Cap, MaxPerKey: s.MaxPerKey, Headroom: s.Headroom,
		BackendArgs: []string{"-chunk-delay", s.ChunkDelay.String()}, Keys: keys,
	}
}

// WaitStats is one key's queue wait in one phase.
type WaitStats struct {
	Requests  int            `json:"requests"`
	Completed int            `json:"completed"`
	P50       Millis         `json:"p50_wait_ms"`
	P99       Millis         `json:"p99_wait_ms"`
	Errors    map[string]int `json:"errors,omitempty"`
}

// Millis is a duration written in milliseconds.
type Millis float64

func ms(d time.Duration) Millis { return Millis(float64(d) / float64(time.Millisecond)) }

// waits is the queue wait of key's complete replies: the time to the
// response headers less base, the fastest such time seen for this request
// shape when nothing queued (the backend's first chunk plus the path
// through the proxy).
func waits(rs []Result, key string, base time.Duration) WaitStats {
	var ws []time.Duration
	st := WaitStats{}
	var mine []Result
	for _, r := range rs {
		if r.Key != key {
			continue
		}
		if r.Cut {
			continue
		}
		mine = append(mine, r)
		st.Requests++
		if r.OK() {
			st.Completed++
			ws = append(ws, max(r.Headers-base, 0))
		}
	}
	st.P50, st.P99 = ms(Percentile(ws, 0.5)), ms(Percentile(ws, 0.99))
	st.Errors = errorSummary(mine)
	return st
}

// fastest is the shortest time to headers among complete replies.
func fastest(rs []Result) time.Duration {
	var best time.Duration
	for _, r := range rs {
		if r.OK() && (best == 0 || r.Headers < best) {
			best = r.Headers
		}
	}
	return best
}

// NeighbourResult is the light key's wait alone and beside a key sending
// ten times its rate.
type NeighbourResult struct {
	RateB    float64   `json:"rate_b_per_s"`
	RateA    float64   `json:"rate_a_per_s"`
	BaseMs   Millis    `json:"base_ms"` // time to headers of an unqueued request, subtracted
	BAlone   WaitStats `json:"b_alone"`
	BWithA   WaitStats `json:"b_with_a"`
	A        WaitStats `json:"a"`
	P99Ratio float64   `json:"p99_ratio"` // BWithA.P99 / BAlone.P99
	Passed   bool      `json:"passed"`    // ratio <= 1.5
	// Ideal is the ideal scheduler's figures on the same arrivals
	// (idealTable): keeping 0 to Slots−1 slots for B, keeping B's recent
	// peak, and preempting.
	Ideal []IdealResult `json:"ideal"`
	// Timeline is every request of both phases, in order of arrival:
	// what the percentiles above summarise, for reading a tail back to
	// its burst (docs/limits-bench.md).
	Timeline []Arrival `json:"timeline"`
}

// Arrival is one request of the neighbour scenario: its phase ("alone",
// "with_a"), key, replica, when it was sent (from the phase's first
// request) and its queue wait (negative: not a complete reply).
type Arrival struct {
	Phase   string `json:"phase"`
	Key     string `json:"key"`
	Replica int    `json:"replica"`
	At      Millis `json:"at_ms"`
	Wait    Millis `json:"wait_ms"`
}

// timeline lists rs as Arrivals, in order of arrival, waits less base.
func timeline(phase string, rs []Result, base time.Duration) []Arrival {
	sort.Slice(rs, func(i, j int) bool { return rs[i].Start.Before(rs[j].Start) })
	out := make([]Arrival, 0, len(rs))
	for _, r := range rs {
		a := Arrival{Phase: phase, Key: r.Key, Replica: r.Replica, At: ms(r.Start.Sub(rs[0].Start)), Wait: -1}
		if r.OK() {
			a.Wait = ms(max(r.Headers-base, 0))
		}
		out = append(out, a)
	}
	return out
}

// SharesResult is a closed-loop run of two backlogged keys.
type SharesResult struct {
	Weights  map[string]int     `json:"weights"`
	Conns    map[string]int     `json:"conns"`
	Windows  int                `json:"windows"` // windows in which both had waiters throughout
	Slots    map[string]int     `json:"completions"`
	Jain     float64            `json:"jain_index"`     // over the weight-normalised totals
	JainMin  float64            `json:"jain_index_min"` // the worst window
	Share    map[string]float64 `json:"share"`          // of the completions in the windows
	ShareErr map[string]float64 `json:"share_error"`    // |share / weight share − 1|
	Passed   bool               `json:"passed"`
	// Keys is each key's requests over the whole run, waits measured
	// from the fastest reply of the run.
	Keys map[string]WaitStats `json:"keys"`
}

// RunNeighbour runs B alone at rateB, then A at 10 × rateB beside B, on a
// fleet of two keys with equal weights.
func RunNeighbour(ctx context.Context, bins Bins, logDir string, spec SaturationSpec, rateB float64, c Client) (NeighbourResult, error) {
	a := Key{ID: "a", Secret: "bench-key-a-neighbour"}
	b := Key{ID: "b", Secret: "bench-key-b-neighbour"}
	f, err := StartFleet(ctx, bins, spec.fleet("neighbour", []Key{a, b}), logDir)
	if err != nil {
		return NeighbourResult{}, err
	}
	defer f.Stop()
	settle(ctx, 2*time.Second)
	if err := f.Warm(ctx, c, []Key{a, b}, spec.Req); err != nil {
		return NeighbourResult{}, err
	}
	sender := func(k Key) sendFunc {
		return func(ctx context.Context, i int) Result {
			r := c.Do(ctx, f.URL(i), k.ID, k.Secret, spec.spread(k.ID, i))
			r.Replica = i % len(f.Replicas)
			return r
		}
	}
	reqCtx, cancel := context.WithTimeout(ctx, 2*spec.Duration+2*time.Minute)
	defer cancel()

	var alone results
	openLoop(ctx, reqCtx, rateB, spec.Duration, seedB, sender(b), &alone)
	var both results
	done := make(chan struct{})
	go func() {
		defer close(done)
		openLoop(ctx, reqCtx, 10*rateB, spec.Duration, seedA, sender(a), &both)
	}()
	openLoop(ctx, reqCtx, rateB, spec.Duration, seedB, sender(b), &both)
	<-done

	base := fastest(alone.all())
	res := NeighbourResult{RateB: rateB, RateA: 10 * rateB, BaseMs: ms(base)}
	res.BAlone = waits(alone.all(), b.ID, base)
	res.BWithA = waits(both.all(), b.ID, base)
	res.A = waits(both.all(), a.ID, base)
	if res.BAlone.P99 > 0 {
		res.P99Ratio = float64(res.BWithA.P99 / res.BAlone.P99)
	}
	res.Passed = res.BAlone.P99 > 0 && res.P99Ratio <= 1.5
	res.Ideal = idealTable(neighbourIdeal(spec, rateB, seedA))
	res.Timeline = append(timeline("alone", alone.all(), base), timeline("with_a", both.all(), base)...)
	return res, ctx.Err()
}

// RunShares runs two keys with weights wa:wb, both in closed loops with
// more requests outstanding than the fleet has slots, A with ten times B's
// connections, and counts who got the slots.
func RunShares(ctx context.Context, bins Bins, logDir string, spec SaturationSpec, wa, wb int, c Client) (SharesResult, error) {
	name := "shares-" + strconv.Itoa(wa) + "-" + strconv.Itoa(wb)
	a := Key{ID: "a", Secret: "bench-key-a-" + name, Weight: wa}
	b := Key{ID: "b", Secret: "bench-key-b-" + name, Weight: wb}
	f, err := StartFleet(ctx, bins, spec.fleet(name, []Key{a, b}), logDir)
	if err != nil {
		return SharesResult{}, err
	}
	defer f.Stop()
	settle(ctx, 2*time.Second)
	if err := f.Warm(ctx, c, []Key{a, b}, spec.Req); err != nil {
		return SharesResult{}, err
	}
	connsB := spec.Slots() + 2
	connsA := 10 * connsB
	var out results
	start := time.Now()
	done := make(chan struct{})
	go func() {
		defer close(done)
		closedLoop(ctx, connsA, spec.Duration, func(ctx context.Context, i int) Result {
			return c.Do(ctx, f.URL(i), a.ID, a.Secret, spec.Req)
		}, nil, &out)
	}()
	closedLoop(ctx, connsB, spec.Duration, func(ctx context.Context, i int) Result {
		return c.Do(ctx, f.URL(i), b.ID, b.Secret, spec.Req)
	}, nil, &out)
	<-done
	rs := out.all()
	// Windows from the end of the warm-up to two service times before
	// the end, in which each key had more requests outstanding than the
	// fleet has slots throughout: both had waiters.
	wins := BacklogWindows(rs, []string{a.ID, b.ID}, spec.Slots()+1, start.Add(spec.Warmup), start.Add(spec.Duration-2*spec.Service()), spec.Window)
	res := SharesResult{
		Weights: map[string]int{a.ID: wa, b.ID: wb}, Conns: map[string]int{a.ID: connsA, b.ID: connsB},
		Windows: len(wins), Slots: map[string]int{}, JainMin: 1, ShareErr: map[string]float64{},
		Keys: map[string]WaitStats{a.ID: waits(rs, a.ID, fastest(rs)), b.ID: waits(rs, b.ID, fastest(rs))},
	}
	for _, w := range wins {
		res.Slots[a.ID] += w.Counts[a.ID]
		res.Slots[b.ID] += w.Counts[b.ID]
		res.JainMin = min(res.JainMin, Jain([]float64{float64(w.Counts[a.ID]) / float64(wa), float64(w.Counts[b.ID]) / float64(wb)}))
	}
	counts := []float64{float64(res.Slots[a.ID]), float64(res.Slots[b.ID])}
	res.Jain = Jain([]float64{counts[0] / float64(wa), counts[1] / float64(wb)})
	se := ShareError(counts, []float64{float64(wa), float64(wb)})
	res.ShareErr[a.ID], res.ShareErr[b.ID] = se[0], se[1]
	if total := counts[0] + counts[1]; total > 0 {
		res.Share = map[string]float64{a.ID: counts[0] / total, b.ID: counts[1] / total}
	}
	if len(wins) == 0 {
		res.JainMin = 0
	}
	if wa == wb {
		res.Passed = len(wins) > 0 && res.Jain >= 0.95
	} else {
		res.Passed = len(wins) > 0 && se[0] <= 0.10 && se[1] <= 0.10
	}
	return res, ctx.Err()
}
