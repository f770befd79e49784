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

// TestHalfOpenAdmitsOneProbeAndAnyRequests: half-open takes one probe at a
// time, stays half-open (so requests are still routed there) while it runs,
// and the first verdict decides.
func TestHalfOpenAdmitsOneProbeAndAnyRequests(t *testing.T) {
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
	if h.State() != HalfOpen {
		t.Fatalf("state %v while a probe runs: requests would not be routed there", h.State())
	}
	h.EndTrial() // the probe ended without a verdict
	if !h.BeginTrial() {
		t.Fatal("no probe admitted after the last one ended")
	}
	h.Success() // a request (or the probe) succeeded
	if h.State() != Closed || h.BeginTrial() {
		t.Fatal("a success did not close the breaker")
	}
	// A failure during half-open opens it again at once, for twice as long.
	h.Failure(boom, true)
	clk.add(time.Second)
	h.BeginTrial()
	h.Failure(boom, false)
	if h.State() != Open {
		t.Fatal("a half-open failure below the threshold did not reopen")
	}
	clk.add(time.Second)
	if h.State() != Open {
		t.Fatal("the open period did not double")
	}
}
