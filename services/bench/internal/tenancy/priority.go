package tenancy

import (
	"context"
	"time"
)

// PriorityResult is interactive traffic's wait alone and beside a batch
// flood.
type PriorityResult struct {
	Rate       float64   `json:"interactive_rate_per_s"`
	BatchConns int       `json:"batch_conns"`
	BaseMs     Millis    `json:"base_ms"`
	Alone      WaitStats `json:"interactive_alone"`
	WithBatch  WaitStats `json:"interactive_with_batch"`
	Batch      WaitStats `json:"batch"`
	BatchShare float64   `json:"batch_share"` // of the replies completed during the flood
	P99Ratio   float64   `json:"p99_ratio"`
	Passed     bool      `json:"passed"` // ratio <= 1.5
	// Ideal is the ideal scheduler's figures on the same interactive
	// arrivals (idealTable): keeping 0 to Slots−1 slots for them, keeping
	// their recent peak, and preempting.
	Ideal []IdealResult `json:"ideal"`
}

// RunPriority runs an interactive key alone at rate, then beside a batch
// key (class batch in the config, and X-Drover-Priority: batch on every
// request) flooding the fleet from ten times as many connections as it has
// slots.
func RunPriority(ctx context.Context, bins Bins, logDir string, spec SaturationSpec, rate float64, c Client) (PriorityResult, error) {
	chat := Key{ID: "chat", Secret: "bench-key-chat-priority", Class: "interactive"}
	batch := Key{ID: "batch", Secret: "bench-key-batch-priority", Class: "batch"}
	f, err := StartFleet(ctx, bins, spec.fleet("priority", []Key{chat, batch}), logDir)
	if err != nil {
		return PriorityResult{}, err
	}
	defer f.Stop()
	settle(ctx, 2*time.Second)
	if err := f.Warm(ctx, c, []Key{chat, batch}, spec.Req); err != nil {
		return PriorityResult{}, err
	}
	reqCtx, cancel := context.WithTimeout(ctx, 2*spec.Duration+2*time.Minute)
	defer cancel()
	sendChat := func(ctx context.Context, i int) Result { return c.Do(ctx, f.URL(i), chat.ID, chat.Secret, spec.Req) }

	var alone results
	openLoop(ctx, reqCtx, rate, spec.Duration, seedInteractive, sendChat, &alone)

	conns := 10 * spec.Slots()
	batchReq := spec.Req
	batchReq.Batch = true
	var both results
	floodCtx, stopFlood := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		closedLoop(floodCtx, conns, time.Hour, func(ctx context.Context, i int) Result {
			return c.Do(ctx, f.URL(i), batch.ID, batch.Secret, batchReq)
		}, nil, &both)
	}()
	// The flood fills the queue before interactive traffic starts.
	settle(ctx, spec.Warmup)
	openLoop(ctx, reqCtx, rate, spec.Duration, seedInteractive, sendChat, &both)
	stopFlood()
	<-done

	base := fastest(alone.all())
	res := PriorityResult{Rate: rate, BatchConns: conns, BaseMs: ms(base)}
	res.Alone = waits(alone.all(), chat.ID, base)
	res.WithBatch = waits(both.all(), chat.ID, base)
	res.Batch = waits(both.all(), batch.ID, base)
	if n := res.Batch.Completed + res.WithBatch.Completed; n > 0 {
		res.BatchShare = float64(res.Batch.Completed) / float64(n)
	}
	if res.Alone.P99 > 0 {
		res.P99Ratio = float64(res.WithBatch.P99 / res.Alone.P99)
	}
	res.Passed = res.Alone.P99 > 0 && res.P99Ratio <= 1.5
	res.Ideal = idealTable(priorityIdeal(spec, rate, spec.Warmup))
	return res, ctx.Err()
}
