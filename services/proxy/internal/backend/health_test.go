package backend

import (
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/droverhq/drover/pkg/config"
)

type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time      { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) add(d time.Duration) { c.mu.Lock(); c.t = c.t.Add(d); c.mu.Unlock() }

func newHealth() (*Health, *clock) {
	h := NewHealth(config.Health{FailureThreshold: 3, OpenFor: time.Second, OpenMax: 4 * time.Second})
	clk := &clock{t: time.Unix(0, 0)}
	h.now = clk.now
	return h, clk
}

func TestBreaker(t *testing.T) {
	boom := errors.New("boom")
	h, clk := newHealth()
	h.Failure(boom, false)
	h.Failure(boom, false)
	if h.State() != Closed {
		t.Fatal("opened below the threshold")
	}
	h.Success() // resets the run
	h.Failure(boom, false)
	h.Failure(boom, false)
	if h.State() != Closed {
		t.Fatal("success did not reset the count")
	}
	h.Failure(boom, false)
	if h.State() != Open || h.BeginTrial() {
		t.Fatal("threshold reached but not open")
	}
	clk.add(time.Second)
	if h.State() != HalfOpen || !h.BeginTrial() || h.BeginTrial() {
		t.Fatal("want one half-open trial")
	}
	h.Failure(boom, false) // trial failed: open for twice as long
	clk.add(time.Second)
	if h.State() != Open {
		t.Fatal("backoff did not double")
	}
	clk.add(time.Second)
	if h.State() != HalfOpen {
		t.Fatal("not half-open after doubled period")
	}
	h.Success()
	if h.State() != Closed || h.Snapshot().LastError != "boom" {
		t.Fatalf("snapshot %+v", h.Snapshot())
	}
}

func TestConnectErrorOpensAtOnce(t *testing.T) {
	h, _ := newHealth()
	h.Failure(errors.New("connection refused"), true)
	if h.State() != Open {
		t.Fatal("a hard failure must open the breaker")
	}
}

func TestBackoffCapped(t *testing.T) {
	h, clk := newHealth()
	h.Failure(errors.New("x"), true)
	for range 10 {
		clk.add(time.Hour)
		h.BeginTrial()
		h.Failure(errors.New("x"), true)
	}
	clk.add(4 * time.Second)
	if h.State() != HalfOpen {
		t.Fatal("open period grew past open_max")
	}
}

// TestHalfOpenAdmitsOneTrial: half-open lets one trial run at a time, a
// probe's or a request's, stays half-open while it runs, and the first
// verdict decides.
func TestHalfOpenAdmitsOneTrial(t *testing.T) {
	boom := errors.New("boom")
	h, clk := newHealth()
	h.Failure(boom, true)
	clk.add(time.Second)
	if !h.BeginTrial() {
		t.Fatal("no probe admitted once the open period was over")
	}
	if h.BeginTrial() {
		t.Fatal("a second probe admitted while one runs")
	}
	if ok, _ := h.ClaimTrial("request"); ok {
		t.Fatal("a request admitted while a probe runs")
	}
	if h.State() != HalfOpen {
		t.Fatalf("state %v while a probe runs", h.State())
	}
	h.EndTrial() // the probe ended without a verdict
	if ok, fresh := h.ClaimTrial("request"); !ok || !fresh {
		t.Fatal("no request admitted after the probe ended")
	}
	if ok, fresh := h.ClaimTrial("request"); !ok || fresh {
		t.Fatal("the holder asking again is not still the holder")
	}
	if h.BeginTrial() {
		t.Fatal("a probe admitted while a request's trial runs")
	}
	h.ReleaseTrial("other") // not the holder: changes nothing
	if ok, _ := h.ClaimTrial("another request"); ok {
		t.Fatal("a release by someone else freed the trial")
	}
	h.ReleaseTrial("request") // its client left: no verdict
	if !h.BeginTrial() {
		t.Fatal("no probe admitted after the request's trial ended")
	}
	h.Success() // the probe succeeded
	if h.State() != Closed || h.BeginTrial() {
		t.Fatal("a success did not close the breaker")
	}
	// A failure during half-open opens it again at once, for twice as long.
	h.Failure(boom, true)
	clk.add(time.Second)
	h.ClaimTrial("request")
	h.Failure(boom, false)
	if h.State() != Open {
		t.Fatal("a half-open failure below the threshold did not reopen")
	}
	clk.add(time.Second)
	if h.State() != Open {
		t.Fatal("the open period did not double")
	}
}

// However many requests ask at once, one gets the trial (run with -race).
func TestHalfOpenTrialIsExclusiveUnderConcurrency(t *testing.T) {
	h, clk := newHealth()
	h.Failure(errors.New("boom"), true)
	clk.add(time.Second)
	const n = 64
	var wg sync.WaitGroup
	var mu sync.Mutex
	won := 0
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if ok, _ := h.ClaimTrial(i); ok {
				mu.Lock()
				won++
				mu.Unlock()
			}
			h.State()
		}()
	}
	wg.Wait()
	if won != 1 {
		t.Fatalf("%d of %d concurrent requests got the half-open trial", won, n)
	}
}
