package routingbench

import (
	"context"
	"fmt"
	"math"
	"sort"
	"strconv"
	"sync"
	"time"
)

// Result is one Setup's run over the ramp.
type Result struct {
	Setup
	Steps []StepStats `json:"steps"`
	// Over the whole ramp:
	HitRate float64 `json:"token_hit_rate"`
	TTFTP50 Millis  `json:"ttft_p50_ms"`
	TTFTP99 Millis  `json:"ttft_p99_ms"`
	Errors  int     `json:"errors"`
	// Sustained is the highest step throughput with TTFT p99 under the
	// limit and no errors; SustainedAt is that step's offered rate (0: none).
	Sustained   float64 `json:"sustained_rps"`
	SustainedAt float64 `json:"sustained_at_offered_rps"`
	// BackendRequests counts /api/chat requests per backend (from the
	// replicas' drover_requests_total, one warm-up request per replica
	// included); LoadMax and LoadMin are the busiest and idlest backend's.
	BackendRequests map[string]int64 `json:"backend_requests"`
	LoadMax         int64            `json:"load_max"`
	LoadMin         int64            `json:"load_min"`
	// Picks counts the replicas' affinity decisions by outcome (hit, miss,
	// override: over the load bound).
	Picks map[string]int64 `json:"affinity_picks,omitempty"`
	// ShareBytesPerRequest and ShareMessagesPerSecond are what the
	// replicas sent on drover.affinity (sharing only), per request sent and
	// per second of the run (over all replicas).
	ShareBytesPerRequest   float64 `json:"share_bytes_per_request,omitempty"`
	ShareMessagesPerSecond float64 `json:"share_messages_per_second,omitempty"`
}

// RunSpec is everything a Setup's run shares with the others.
type RunSpec struct {
	Bins     Bins
	Backends Backends
	Workload WorkloadSpec
	Steps    []Step
	// Warmup runs the first step's rate this long before the ramp, left out
	// of every figure: the backends' caches start the ramp warm.
	Warmup    time.Duration
	Seed      uint64
	P99Limit  time.Duration // for Sustained
	LogDir    string
	Client    Client
	DrainWait time.Duration // after the ramp, how long to wait for open sessions
}

const model = "tiny"

// Run starts setup's fleet, sends the ramp through it and stops it.
func Run(ctx context.Context, spec RunSpec, setup Setup) (Result, error) {
	res := Result{Setup: setup}
	started := time.Now()
	fleet, err := StartFleet(ctx, spec.Bins, spec.Backends, setup, spec.LogDir)
	if err != nil {
		return res, fmt.Errorf("%s: starting the fleet: %w", setup.Name, err)
	}
	defer fleet.Stop()
	if setup.Replicas > 1 {
		wait(ctx, 1500*time.Millisecond) // replicas hear of each other (fleet sync heartbeats every second)
	}
	for i, p := range fleet.Replicas { // model lists cached, connections open
		s := spec.Client.Chat(ctx, p.URL, model, "warm-"+strconv.Itoa(i), []Message{{"user", "warm up"}}, 1, time.Now())
		if s.Err != "" {
			return res, fmt.Errorf("%s: warming replica %d: %s", setup.Name, i+1, s.Err)
		}
	}
	ramp := spec.Steps
	if spec.Warmup > 0 {
		ramp = append([]Step{{Rate: spec.Steps[0].Rate, Duration: spec.Warmup}}, ramp...)
	}
	marks := make(chan []Scraped, 1)
	go func() { marks <- scrapeSteps(ctx, fleet, spec, time.Now()) }()
	all := Drive(ctx, spec, ramp, func(session, turn int) string {
		return fleet.Replicas[(session+turn)%len(fleet.Replicas)].URL
	})
	if ctx.Err() != nil {
		<-marks
		return res, ctx.Err()
	}
	samples := AfterWarmup(all, spec.Warmup)
	res.Steps = Summarize(spec.Steps, samples)
	if m := <-marks; len(m) == len(spec.Steps)+1 {
		for i := range res.Steps {
			res.Steps[i].Slotted = map[string]int64{}
			for k, v := range m[i+1].Slotted {
				if d := v - m[i].Slotted[k]; d > 0 {
					res.Steps[i].Slotted[k] = d
				}
			}
		}
	}
	var p50, p99 time.Duration
	res.HitRate, p50, p99, res.Errors = Total(samples)
	res.TTFTP50, res.TTFTP99 = Ms(p50), Ms(p99)
	var at int
	res.Sustained, at = Sustained(res.Steps, spec.P99Limit)
	if at >= 0 {
		res.SustainedAt = res.Steps[at].Offered
	}
	m, err := fleet.Scrape(ctx, spec.Client.HTTP)
	if err != nil {
		return res, fmt.Errorf("%s: %w", setup.Name, err)
	}
	res.BackendRequests, res.Picks = m.BackendRequests, m.Picks
	if n := len(all) + len(fleet.Replicas); m.ShareMessages > 0 {
		res.ShareBytesPerRequest = float64(m.ShareBytes) / float64(n)
		res.ShareMessagesPerSecond = float64(m.ShareMessages) / time.Since(started).Seconds()
	}
	res.LoadMax, res.LoadMin = loadRange(res.BackendRequests, spec.Backends.Count)
	return res, nil
}

// scrapeSteps scrapes the replicas at the end of the warm-up and of every
// step, the ramp having started at start; nil when a scrape failed.
func scrapeSteps(ctx context.Context, fleet *Fleet, spec RunSpec, start time.Time) []Scraped {
	at := spec.Warmup
	var out []Scraped
	for i := -1; i < len(spec.Steps); i++ {
		if i >= 0 {
			at += spec.Steps[i].Duration
		}
		if !wait(ctx, time.Until(start.Add(at))) {
			return nil
		}
		m, err := fleet.Scrape(ctx, spec.Client.HTTP)
		if err != nil {
			return nil
		}
		out = append(out, m)
	}
	return out
}

// AfterWarmup keeps the samples sent after warmup, their times shifted to
// start there.
func AfterWarmup(samples []Sample, warmup time.Duration) []Sample {
	var out []Sample
	for _, s := range samples {
		if s.Sent >= warmup {
			s.Sent -= warmup
			s.Finished -= warmup
			out = append(out, s)
		}
	}
	return out
}

// Drive sends the sessions of ramp, each turn to the URL target picks, and
// returns every request's sample. Sessions start on the schedule whether or
// not earlier ones are done (open loop); a conversation's next turn waits
// for the previous reply and its think time.
func Drive(ctx context.Context, spec RunSpec, ramp []Step, target func(session, turn int) string) []Sample {
	sessions := spec.Workload.Schedule(ramp, spec.Seed)
	systems := make([]string, spec.Workload.Groups)
	for g := range systems {
		systems[g] = spec.Workload.System(g)
	}
	var rampEnd time.Duration
	for _, st := range ramp {
		rampEnd += st.Duration
	}
	ctx, cancel := context.WithTimeout(ctx, rampEnd+spec.DrainWait)
	defer cancel()
	var (
		mu      sync.Mutex
		samples []Sample
		wg      sync.WaitGroup
	)
	start := time.Now()
	for _, sess := range sessions {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if !wait(ctx, time.Until(start.Add(sess.At))) {
				return
			}
			msgs := []Message{{"system", systems[sess.Group]}}
			id := "conv-" + strconv.Itoa(sess.ID)
			for turn := range sess.Turns {
				if turn > 0 && !wait(ctx, sess.Think[turn-1]) {
					return
				}
				msgs = append(msgs, Message{"user", spec.Workload.User(sess.ID, turn)})
				s := spec.Client.Chat(ctx, target(sess.ID, turn), model, id, msgs, spec.Workload.ReplyTokens, start)
				mu.Lock()
				samples = append(samples, s)
				mu.Unlock()
				if s.Err != "" {
					return
				}
				msgs = append(msgs, Message{"assistant", s.Reply})
			}
		}()
	}
	wg.Wait()
	sort.Slice(samples, func(i, j int) bool { return samples[i].Sent < samples[j].Sent })
	return samples
}

// wait sleeps d; false when ctx ended first.
func wait(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// loadRange is the busiest and the idlest backend's count; a backend
// missing from counts served nothing.
func loadRange(counts map[string]int64, backends int) (hi, lo int64) {
	if len(counts) == 0 {
		return 0, 0
	}
	lo = math.MaxInt64
	for _, n := range counts {
		lo, hi = min(lo, n), max(hi, n)
	}
	if len(counts) < backends {
		lo = 0
	}
	return hi, lo
}
