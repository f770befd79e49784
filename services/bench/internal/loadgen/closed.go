package loadgen

import (
	"context"
	"fmt"
	"net/http"
	"sync"
	"time"

	"github.com/droverhq/drover/services/bench/internal/workload"
)

// Closed runs conns workers, each sending its next request as soon as the
// previous one finished, for d. Requests in flight when d ends are waited for
// and counted, so every request the target saw is accounted for.
func Closed(ctx context.Context, client *http.Client, baseURL string, w workload.Workload, conns int, d time.Duration) (Result, error) {
	if conns < 1 || d <= 0 {
		return Result{}, fmt.Errorf("closed loop needs conns >= 1 and a positive duration, got %d and %v", conns, d)
	}
	s := newSender(client, baseURL, w)
	parts := make([]Result, conns)
	start := time.Now()
	deadline := start.Add(d)
	var wg sync.WaitGroup
	for i := range parts {
		wg.Add(1)
		go func(part *Result) {
			defer wg.Done()
			part.Latencies = make([]time.Duration, 0, 4096)
			for ctx.Err() == nil {
				t0 := time.Now()
				if !t0.Before(deadline) {
					return
				}
				failure := s.do(ctx)
				part.record(time.Since(t0), failure)
			}
		}(&parts[i])
	}
	wg.Wait()
	var res Result
	res.Elapsed = time.Since(start)
	for i := range parts {
		res.merge(&parts[i])
	}
	return res, ctx.Err()
}
