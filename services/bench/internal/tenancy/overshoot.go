package tenancy

import (
	"context"
	"fmt"
	"net/http"
	"sync/atomic"
	"time"
)

// OvershootSpec is the budget scenario: one key with a day budget, Conns
// concurrent clients sending Req round robin over the replicas, each until
// it is refused.
type OvershootSpec struct {
	Budget   int64
	Conns    int
	Req      Request
	Latency  time.Duration // the backend's pause before a reply, so requests overlap
	MaxRun   time.Duration // give up after this long
	Replicas int
}

// OvershootResult is one admission mode's run.
type OvershootResult struct {
	Admission string `json:"admission"`
	Budget    int64  `json:"budget_tokens"`
	Served    int64  `json:"served_tokens"` // prompt + output of every complete reply
	// Over is Served − Budget (negative: the budget was not reached).
	Over        int64          `json:"over_tokens"`
	OverPercent float64        `json:"over_percent"`
	OverPerReq  float64        `json:"over_requests"` // Over in requests' worth
	Completed   int            `json:"completed"`
	Refused     int            `json:"refused"` // 429s
	Errors      map[string]int `json:"errors,omitempty"`
	Duration    string         `json:"duration"`
	// Target: at most one request's worth per replica and under 5 %.
	Bound  int64 `json:"bound_tokens"`
	Passed bool  `json:"passed"`
}

// RunOvershoot starts a fleet with admission mode and runs spec on it.
func RunOvershoot(ctx context.Context, bins Bins, logDir, admission string, spec OvershootSpec, c Client) (OvershootResult, error) {
	key := Key{ID: "budget", Secret: "bench-budget-" + admission, TokensPerDay: spec.Budget}
	f, err := StartFleet(ctx, bins, FleetSpec{Headroom: -1,
		Name: "overshoot-" + admission, Replicas: spec.Replicas, Backends: 1,
		BackendArgs: []string{"-latency", spec.Latency.String()},
		Cap:         4 * spec.Conns, Admission: admission, Keys: []Key{key},
	}, logDir)
	if err != nil {
		return OvershootResult{}, err
	}
	defer f.Stop()
	settle(ctx, 2*time.Second)

	var (
		out    results
		served atomic.Int64
	)
	start := time.Now()
	closedLoop(ctx, spec.Conns, spec.MaxRun, func(ctx context.Context, i int) Result {
		return c.Do(ctx, f.URL(i), key.ID, key.Secret, spec.Req)
	}, func(r Result) bool {
		// A worker stops at its first refusal, or once twice the budget
		// was served: then the budget is not enforced at all.
		return r.Status == http.StatusTooManyRequests || r.Status == 0 || served.Add(r.Prompt+r.Output) > 2*spec.Budget
	}, &out)
	rs := out.all()
	res := OvershootResult{Admission: admission, Budget: spec.Budget, Duration: time.Since(start).Round(time.Millisecond).String()}
	for _, r := range rs {
		switch {
		case r.OK():
			res.Completed++
			res.Served += r.Prompt + r.Output
		case r.Status == http.StatusTooManyRequests:
			res.Refused++
		}
	}
	res.Errors = errorSummary(rs)
	delete(res.Errors, "status 429")
	if res.Refused == 0 {
		return res, fmt.Errorf("no request was refused (%d tokens served against a budget of %d): is tokens_per_day enforced?", res.Served, spec.Budget)
	}
	per := spec.Req.Tokens()
	res.Over = res.Served - spec.Budget
	res.OverPercent = 100 * float64(res.Over) / float64(spec.Budget)
	res.OverPerReq = float64(res.Over) / float64(per)
	res.Bound = int64(spec.Replicas) * per
	res.Passed = res.Over <= res.Bound && res.OverPercent < 5
	return res, nil
}
