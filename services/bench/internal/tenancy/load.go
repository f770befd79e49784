package tenancy

import (
	"context"
	"math/rand/v2"
	"sync"
	"time"
)

// sendFunc sends request number i and returns what came back.
type sendFunc func(ctx context.Context, i int) Result

// results collects Results from many goroutines.
type results struct {
	mu sync.Mutex // guards rs
	rs []Result
}

func (c *results) add(r Result) {
	c.mu.Lock()
	c.rs = append(c.rs, r)
	c.mu.Unlock()
}

func (c *results) all() []Result {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]Result(nil), c.rs...)
}

// arrivals is an open loop's schedule: Poisson arrivals at rate per second
// over d, seeded, as offsets from the loop's start. The ideal model
// (ideal.go) replays the same schedules.
func arrivals(rate float64, d time.Duration, seed uint64) []time.Duration {
	rng := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	var out []time.Duration
	var at time.Duration
	for {
		at += time.Duration(rng.ExpFloat64() / rate * float64(time.Second))
		if at > d {
			return out
		}
		out = append(out, at)
	}
}

// openLoop starts requests at rate per second, Poisson arrivals (seeded,
// so runs are alike), for d, whatever the replies do; it returns when every
// request has ended. Requests still running drain after d: reqCtx bounds
// them.
func openLoop(ctx, reqCtx context.Context, rate float64, d time.Duration, seed uint64, send sendFunc, out *results) {
	var wg sync.WaitGroup
	start := time.Now()
	for i, at := range arrivals(rate, d, seed) {
		t := time.NewTimer(time.Until(start.Add(at)))
		select {
		case <-ctx.Done():
			t.Stop()
			wg.Wait()
			return
		case <-t.C:
		}
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			out.add(send(reqCtx, i))
		}(i)
	}
	wg.Wait()
}

// closedLoop runs conns workers, each sending its next request when the
// last ended, until d has passed or stop reports true for a worker's last
// result (that worker then stops). Request i goes out i-th overall.
func closedLoop(ctx context.Context, conns int, d time.Duration, send sendFunc, stop func(Result) bool, out *results) {
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	var (
		wg sync.WaitGroup
		mu sync.Mutex // guards n
		n  int
	)
	for range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				mu.Lock()
				i := n
				n++
				mu.Unlock()
				r := send(ctx, i)
				if ctx.Err() != nil && !r.OK() {
					// Cut off by the end of the run: not a reply, but it
					// was outstanding until now.
					r.Cut, r.Total = true, time.Since(r.Start)
					out.add(r)
					return
				}
				out.add(r)
				if stop != nil && stop(r) {
					return
				}
			}
		}()
	}
	wg.Wait()
}
