package loadgen

import (
	"context"
	"fmt"
	"net/http"
	"sync"
	"time"

	"github.com/droverhq/drover/services/bench/internal/workload"
)

// Open sends rate requests per second for d on a fixed schedule, whether or
// not earlier requests have finished, and measures each latency from the
// request's scheduled start. A slow target therefore shows up as latency
// instead of quietly lowering the offered load (coordinated omission).
//
// At most maxInFlight requests are outstanding; a request due while that
// many are still open is not sent and counts as an error ("dropped"), so a
// stalled target cannot make the generator grow without bound.
func Open(ctx context.Context, client *http.Client, baseURL string, w workload.Workload, rate float64, d time.Duration, maxInFlight int) (Result, error) {
	n := int(rate * d.Seconds())
	if n < 1 || maxInFlight < 1 {
		return Result{}, fmt.Errorf("open loop needs rate*duration >= 1 and maxInFlight >= 1, got %v/s for %v and %d", rate, d, maxInFlight)
	}
	s := newSender(client, baseURL, w)
	// One slot per scheduled request, written only by that request's
	// goroutine and read after wg.Wait, so no lock is needed.
	lat := make([]time.Duration, n)
	fail := make([]string, n)
	slots := make(chan struct{}, maxInFlight)
	perReq := float64(time.Second) / rate

	var (
		wg     sync.WaitGroup
		maxLag time.Duration
		sent   int
	)
	// Since Go 1.23 a timer can be Reset without draining it.
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	start := time.Now()
	for i := range n {
		due := start.Add(time.Duration(float64(i) * perReq))
		if wait := time.Until(due); wait > 0 {
			timer.Reset(wait)
			select {
			case <-ctx.Done():
			case <-timer.C:
			}
		}
		if ctx.Err() != nil {
			break
		}
		sent++
		maxLag = max(maxLag, time.Since(due))
		select {
		case slots <- struct{}{}:
		default:
			fail[i] = "dropped: in-flight limit reached"
			continue
		}
		wg.Add(1)
		go func(i int, due time.Time) {
			defer wg.Done()
			fail[i] = s.do(ctx)
			lat[i] = time.Since(due)
			<-slots
		}(i, due)
	}
	// A dispatcher that fell behind sent over a longer window than planned;
	// the achieved rate must say so.
	window := max(d, time.Since(start))
	wg.Wait()

	res := Result{Elapsed: window, MaxLag: maxLag, Latencies: make([]time.Duration, 0, sent)}
	for i := range sent {
		res.record(lat[i], fail[i])
	}
	return res, ctx.Err()
}
