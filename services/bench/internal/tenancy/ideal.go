package tenancy

import (
	"math/rand/v2"
	"slices"
	"time"
)

// IdealSpec is a saturation scenario replayed on a model of the fleet with
// no proxy in it: Slots slots, each request holding one for its service
// time, and a scheduler that sees every arrival and release at once. Its
// light key (B in the neighbour scenario, the interactive key in the
// priority one) takes every slot that frees while it has a waiter; the
// heavy key takes a free slot only while doing so leaves Keep slots (or
// the light key's recent Peak), less what the light key holds, free for
// it. Without Preempt (Ollama cannot pause a generation, and a stream its
// client is reading cannot be started over), no scheduler gives the light
// key shorter waits on the same arrivals at the same Keep, on a fleet that
// holds its cap exactly: its waits are the bound Drover's are compared
// with (docs/limits-bench.md, "What no scheduler without preemption
// does").
type IdealSpec struct {
	Slots   int
	Service func(light bool, i int) time.Duration // request i's slot time
	Light   []time.Duration                       // the light key's arrivals, from the phase's start
	Heavy   []time.Duration                       // the heavy key's arrivals (an open loop)
	// Backlog: the heavy key always has a waiter (a closed-loop flood),
	// and held every slot from before the phase, its requests started
	// together at Lead before the phase's start.
	Backlog bool
	Lead    time.Duration
	Bound   int // heavy waiters beyond Bound are refused (routing.queue.max_per_key); 0: no bound
	Keep    int
	// Preempt lets a light waiter that finds no slot free stop the heavy
	// request that started last and take its slot; the stopped request
	// waits again, first in its queue, and starts over. Drover cannot do
	// that to the scenarios' streams: it is here to show what the targets
	// would need, and at what cost.
	Preempt bool
	// Peak, when positive, keeps at least what the light key held and
	// waited for at its peak within the last Peak (up to every slot), as
	// routing.queue.interactive_peak does for the interactive class.
	Peak time.Duration
}

// IdealRun is what the model gave: the light key's waits, in order of
// arrival, and how many heavy requests started before the light key's last
// one did.
type IdealRun struct {
	Waits       []time.Duration
	HeavyServed int
	Stopped     int           // heavy requests stopped (Preempt), each to start over
	Wasted      time.Duration // the slot time they had used
}

type idealSlot struct {
	start, until time.Duration
	light        bool
	i            int  // the request's index
	counted      bool // a heavy request counted in HeavyServed
}

// Run replays the arrivals. It is deterministic.
func (s IdealSpec) Run() IdealRun {
	slots := make([]idealSlot, s.Slots)
	var heavyIdx int
	if s.Backlog {
		// The flood's requests started together at -Lead and each slot's
		// next start is its last end.
		for j := range slots {
			at := -s.Lead
			for at <= 0 {
				at += s.Service(false, heavyIdx)
				heavyIdx++
			}
			slots[j] = idealSlot{start: at - s.Service(false, heavyIdx-1), until: at, i: heavyIdx - 1}
		}
	}
	var (
		run            IdealRun
		lq, hq         []int // waiting: indices into Light, Heavy
		nextL, nextH   int
		now            time.Duration
		lightWaitsLeft = len(s.Light)
	)
	run.Waits = make([]time.Duration, len(s.Light))
	type sample struct {
		at time.Duration
		n  int
	}
	// peaks holds the light key's held + waiting over the last Peak, as a
	// sliding-window maximum: each sample is larger than every later one,
	// so the first is the window's peak.
	var peaks []sample
	observe := func(n int) {
		for len(peaks) > 0 && peaks[0].at < now-s.Peak {
			peaks = peaks[1:]
		}
		for len(peaks) > 0 && peaks[len(peaks)-1].n <= n {
			peaks = peaks[:len(peaks)-1]
		}
		peaks = append(peaks, sample{now, n})
	}
	keep := func() int {
		k := s.Keep
		if len(peaks) > 0 {
			k = max(k, peaks[0].n)
		}
		return min(k, s.Slots)
	}
	const never = time.Duration(1<<63 - 1)
	for lightWaitsLeft > 0 {
		next := never
		if nextL < len(s.Light) {
			next = min(next, s.Light[nextL])
		}
		if nextH < len(s.Heavy) {
			next = min(next, s.Heavy[nextH])
		}
		for _, sl := range slots {
			if sl.until > now {
				next = min(next, sl.until)
			}
		}
		if len(peaks) > 0 {
			next = min(next, peaks[0].at+s.Peak+1) // a kept slot's end, for a heavy waiter
		}
		if next == never {
			break // cannot happen while a light request is left: it arrives or a slot frees
		}
		now = max(now, next)
		for nextL < len(s.Light) && s.Light[nextL] <= now {
			lq = append(lq, nextL)
			nextL++
		}
		for nextH < len(s.Heavy) && s.Heavy[nextH] <= now {
			if s.Bound <= 0 || len(hq) < s.Bound {
				hq = append(hq, nextH)
			}
			nextH++
		}
		for {
			free, nfree, lightHeld := -1, 0, 0
			for j, sl := range slots {
				switch {
				case sl.until <= now:
					nfree++
					if free < 0 {
						free = j
					}
				case sl.light:
					lightHeld++
				}
			}
			if s.Peak > 0 {
				observe(lightHeld + len(lq))
			}
			if free < 0 && len(lq) > 0 && s.Preempt {
				// The heavy request that started last has done least.
				for j, sl := range slots {
					if !sl.light && (free < 0 || sl.start > slots[free].start) {
						free = j
					}
				}
				if free >= 0 {
					run.Stopped++
					run.Wasted += now - slots[free].start
					if slots[free].counted {
						run.HeavyServed--
					}
					if !s.Backlog {
						hq = append([]int{slots[free].i}, hq...)
					}
				}
			}
			if free < 0 {
				break
			}
			if len(lq) > 0 {
				i := lq[0]
				lq = lq[1:]
				run.Waits[i] = now - s.Light[i]
				lightWaitsLeft--
				slots[free] = idealSlot{start: now, until: now + s.Service(true, i), light: true, i: i}
				continue
			}
			heavyWaits := len(hq) > 0 || s.Backlog
			if !heavyWaits || nfree-1 < keep()-lightHeld {
				break
			}
			i := heavyIdx
			if len(hq) > 0 {
				i = hq[0]
				hq = hq[1:]
			} else {
				heavyIdx++
			}
			run.HeavyServed++
			slots[free] = idealSlot{start: now, until: now + s.Service(false, i), i: i, counted: true}
		}
	}
	return run
}

// IdealResult is the model's light-key p99 alone and beside the heavy
// key with Keep slots kept, on one scenario's arrivals.
type IdealResult struct {
	Keep        int     `json:"keep"`
	Peak        bool    `json:"peak,omitempty"`
	Preempt     bool    `json:"preempt,omitempty"`
	Stopped     int     `json:"heavy_stopped,omitempty"`
	AloneP99    Millis  `json:"alone_p99_ms"`
	BesideP99   Millis  `json:"beside_p99_ms"`
	Ratio       float64 `json:"p99_ratio"`
	HeavyServed int     `json:"heavy_served"`
}

// idealPeak is how far back the model's peak reaches: the proxy's
// routing.InteractiveWindow, over which interactive_peak remembers 5 to
// 10 s.
const idealPeak = 10 * time.Second

// idealTable runs spec alone (no heavy key) and beside the heavy key with
// every Keep from 0 to all slots but one, then keeping the light key's
// recent peak, then with preemption and no slot kept.
func idealTable(spec IdealSpec) []IdealResult {
	alone := spec
	alone.Heavy, alone.Backlog, alone.Keep, alone.Preempt = nil, false, 0, false
	aloneP99 := Percentile(alone.Run().Waits, 0.99)
	var out []IdealResult
	for row := 0; row <= spec.Slots+1; row++ {
		spec.Keep, spec.Peak, spec.Preempt = row, 0, false
		switch row {
		case spec.Slots:
			spec.Keep, spec.Peak = 0, idealPeak
		case spec.Slots + 1:
			spec.Keep, spec.Preempt = 0, true
		}
		run := spec.Run()
		r := IdealResult{
			Keep: spec.Keep, Peak: spec.Peak > 0, Preempt: spec.Preempt, Stopped: run.Stopped,
			AloneP99: ms(aloneP99), BesideP99: ms(Percentile(run.Waits, 0.99)), HeavyServed: run.HeavyServed,
		}
		if aloneP99 > 0 {
			r.Ratio = float64(r.BesideP99 / r.AloneP99)
		}
		out = append(out, r)
	}
	return out
}

// Seeds of the open loops' arrivals: the light key's in the neighbour
// scenario, the heavy key's there, and the interactive key's in the
// priority scenario.
const (
	seedB           = 1
	seedA           = 2
	seedInteractive = 3
)

// neighbourIdeal is the model of the neighbour scenario with its own
// arrivals and request lengths.
func neighbourIdeal(spec SaturationSpec, rateB float64, seedHeavy uint64) IdealSpec {
	return IdealSpec{
		Slots: spec.Slots(),
		Service: func(light bool, i int) time.Duration {
			key := "a"
			if light {
				key = "b"
			}
			return time.Duration(spec.spread(key, i).Output) * spec.ChunkDelay
		},
		Light: arrivals(rateB, spec.Duration, seedB),
		Heavy: arrivals(10*rateB, spec.Duration, seedHeavy),
		Bound: spec.MaxPerKey,
	}
}

// priorityIdeal is the model of the priority scenario: the flood started
// lead before the interactive phase.
func priorityIdeal(spec SaturationSpec, rate float64, lead time.Duration) IdealSpec {
	return IdealSpec{
		Slots:   spec.Slots(),
		Service: func(bool, int) time.Duration { return spec.Service() },
		Light:   arrivals(rate, spec.Duration, seedInteractive),
		Backlog: true,
		Lead:    lead,
	}
}

// SweepRow is the model over many draws of what the scenario leaves to
// chance: one Keep's light-key ratio (beside ÷ alone) at the 10th, 50th and
// 90th percentile of the draws, how many met 1.5 ×, and the heavy key's
// mean requests served.
type SweepRow struct {
	Keep        int     `json:"keep"`
	Peak        bool    `json:"peak,omitempty"`
	Preempt     bool    `json:"preempt,omitempty"`
	RatioP10    float64 `json:"ratio_p10"`
	RatioP50    float64 `json:"ratio_p50"`
	RatioP90    float64 `json:"ratio_p90"`
	Met         int     `json:"met"`
	Draws       int     `json:"draws"`
	HeavyServed float64 `json:"heavy_served_mean"`
}

// IdealSweep is the ideal model of both saturation scenarios over draws.
type IdealSweep struct {
	Neighbour []SweepRow `json:"neighbour"` // over the heavy key's arrival seeds
	Priority  []SweepRow `json:"priority"`  // over the flood's start, uniform within a slot time
}

// SweepIdeal runs the model of the neighbour scenario with draws seeds of
// A's arrivals (B's stay the scenario's), and of the priority scenario
// with draws starts of the flood, so that the figures say how often any
// scheduler that cannot preempt meets the targets on these workloads.
func SweepIdeal(spec SaturationSpec, rateB, rateInteractive float64, draws int) IdealSweep {
	var nb, pr [][]IdealResult
	rng := rand.New(rand.NewPCG(4, 4))
	for d := range draws {
		nb = append(nb, idealTable(neighbourIdeal(spec, rateB, uint64(100+d))))
		lead := spec.Warmup + time.Duration(rng.Int64N(int64(spec.Service())))
		pr = append(pr, idealTable(priorityIdeal(spec, rateInteractive, lead)))
	}
	return IdealSweep{Neighbour: sweepRows(nb), Priority: sweepRows(pr)}
}

func sweepRows(tables [][]IdealResult) []SweepRow {
	if len(tables) == 0 {
		return nil
	}
	var rows []SweepRow
	for k := range tables[0] {
		row := SweepRow{Keep: tables[0][k].Keep, Peak: tables[0][k].Peak, Preempt: tables[0][k].Preempt, Draws: len(tables)}
		var ratios []float64
		for _, t := range tables {
			ratios = append(ratios, t[k].Ratio)
			if t[k].Ratio <= 1.5 {
				row.Met++
			}
			row.HeavyServed += float64(t[k].HeavyServed)
		}
		row.HeavyServed /= float64(len(tables))
		slices.Sort(ratios)
		at := func(q float64) float64 { return ratios[min(int(q*float64(len(ratios))), len(ratios)-1)] }
		row.RatioP10, row.RatioP50, row.RatioP90 = at(0.1), at(0.5), at(0.9)
		rows = append(rows, row)
	}
	return rows
}
