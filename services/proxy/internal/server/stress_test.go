package server

import (
	"context"
	"math/rand/v2"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/droverhq/drover/pkg/config"
	"github.com/droverhq/drover/testkit/ollamatest"
)

// TestSeedRaces runs the Python router's races at once: thousands of
// requests with random client cancels, backend failures, cut streams and
// hangs, while caches are invalidated. Afterwards every in-flight counter is
// zero, Drover's token totals equal what the backends reported, model-list
// refreshes stayed coalesced, and no backend saw more than its cap.
func TestSeedRaces(t *testing.T) {
	const (
		requests    = 3000
		concurrency = 200
		capPerModel = 2
	)
	events := &recorder{}
	e := newEnvOpts(t, 3, func(i int, c *ollamatest.Config) {
		c.Chunks = 4
		c.ChunkDelay = 200 * time.Microsecond
	}, func(c *config.Config) {
		c.Routing.MaxConcurrency = capPerModel
		c.Routing.Queue.MaxLength = requests
		c.Routing.Queue.MaxWait = time.Minute
		// Failures are injected per request; keep breakers out of the way so
		// the counters, not the breaker, are under test here.
		c.Health.FailureThreshold = 1 << 20
	}, Options{Sink: events})
	warm(t, e)
	tagsBefore := make([]int64, len(e.fakes))
	for i, f := range e.fakes {
		tagsBefore[i] = f.Requests("/api/tags")
	}

	var ok, failed, cancelled atomic.Int64
	sem := make(chan struct{}, concurrency)
	var wg sync.WaitGroup
	for i := range requests {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			r := rand.IntN(100)
			ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
			defer cancel()
			model, fake, stream := "tiny2", "", i%2 == 0
			switch {
			case r < 60: // plain traffic on tiny2, the model whose cap is checked strictly
			case r < 70: // client cancels mid-stream
				model, fake, stream = "tiny", `{"hang_after_chunks":1}`, true
				ctx, cancel = context.WithTimeout(ctx, time.Duration(1+rand.IntN(20))*time.Millisecond)
				defer cancel()
			case r < 78: // backend errors on every candidate
				model, fake = "tiny", `{"status":500,"error":"boom"}`
			case r < 86: // stream cut by the backend
				model, fake, stream = "tiny", `{"fail_after_chunks":2}`, true
			case r < 94: // backend hangs until the client gives up
				model, fake = "tiny", `{"hang":true}`
				ctx, cancel = context.WithTimeout(ctx, time.Duration(1+rand.IntN(20))*time.Millisecond)
				defer cancel()
			default: // plain traffic on tiny
				model = "tiny"
			}
			resp, _, err := post(t, ctx, e.url+"/api/chat", chatBody(model, stream, fake))
			switch {
			case err != nil:
				cancelled.Add(1)
			case resp.StatusCode == http.StatusOK:
				ok.Add(1)
			default:
				failed.Add(1)
			}
		}()
		if i%500 == 0 {
			e.srv.Fleet.InvalidateLocal() // concurrent invalidation
		}
	}
	wg.Wait()
	t.Logf("ok %d, failed %d, cancelled %d", ok.Load(), failed.Load(), cancelled.Load())

	// In-flight returns to exactly zero (handlers of cancelled requests may
	// still be unwinding for a moment).
	waitFor(t, func() bool { return len(e.srv.Router.InFlight()) == 0 && e.srv.Router.QueueLen() == 0 })

	// Token totals equal what the backends reported, plus the output of
	// streams cut short, counted from the chunks sent (partial events).
	var wantIn, wantOut int64
	for _, ev := range events.all() {
		if ev.Partial {
			wantOut += *ev.OutputTokens
		}
	}
	for _, f := range e.fakes {
		c := f.Counters()
		wantIn += c.PromptEvalCount
		wantOut += c.EvalCount
	}
	var gotIn, gotOut int64
	for _, models := range e.srv.Totals.Snapshot() {
		for _, c := range models {
			gotIn += c.InputTokens
			gotOut += c.OutputTokens
		}
	}
	if gotIn != wantIn || gotOut != wantOut {
		t.Fatalf("tokens: drover %d/%d, backends reported %d/%d", gotIn, gotOut, wantIn, wantOut)
	}
	if ok.Load() < requests/2 {
		t.Fatalf("only %d of %d succeeded", ok.Load(), requests)
	}

	// Refreshes were coalesced: each invalidation costs at most one
	// /api/tags per backend, however many requests raced for it.
	for i, f := range e.fakes {
		if n := f.Requests("/api/tags") - tagsBefore[i]; n > requests/500+1 {
			t.Fatalf("backend %d: %d /api/tags fetches for %d invalidations", i, n, requests/500)
		}
		if m := max(f.MaxInFlight("tiny"), f.MaxInFlight("tiny2")); m > capPerModel {
			t.Fatalf("backend %d ran %d generations of one model at once, cap %d", i, m, capPerModel)
		}
		t.Logf("backend %d: max concurrent tiny (with cancels) %d, tiny2 %d", i, f.MaxInFlight("tiny"), f.MaxInFlight("tiny2"))
	}
}
