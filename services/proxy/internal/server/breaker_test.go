package server

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/droverhq/drover/pkg/config"
	"github.com/droverhq/drover/services/proxy/internal/backend"
)

// When a backend's breaker turns half-open, exactly one request goes to it
// as the trial; the others are refused at once with 503 instead of piling
// onto a backend that may still be broken. Here the trial hangs at the
// backend while ten more requests arrive: all ten are refused, the backend
// sees one request, and once the trial succeeds everyone is served.
// (Before, every request was let through.)
func TestHalfOpenLetsOneTrialRequestThrough(t *testing.T) {
	e := newEnv(t, 1, nil, func(c *config.Config) {
		c.Health.FailureThreshold = 1
		c.Health.OpenFor, c.Health.OpenMax = 50*time.Millisecond, 50*time.Millisecond
		c.Health.ProbeInterval = time.Hour // only requests try it
	})
	warm(t, e)
	fake := e.fakes[0]
	b, _ := e.srv.Fleet.Backend("a")
	fake.SetFailure(500, "boom")
	if resp, _, err := post(t, t.Context(), e.url+"/api/chat", chatBody("tiny", false, "")); err != nil || resp.StatusCode != 500 {
		t.Fatalf("failing backend: %v %v", resp, err)
	}
	if b.Health.State() != backend.Open {
		t.Fatalf("breaker %v after a failure at threshold 1", b.Health.State())
	}
	fake.SetFailure(0, "")
	fake.ResetCounters()
	fake.SetHang(true)
	waitFor(t, func() bool { return b.Health.State() == backend.HalfOpen })

	type answer struct {
		status int
		body   string
	}
	trial := make(chan answer, 1)
	go func() {
		resp, body, err := post(t, t.Context(), e.url+"/api/chat", chatBody("tiny", false, ""))
		if err != nil {
			trial <- answer{0, err.Error()}
			return
		}
		trial <- answer{resp.StatusCode, string(body)}
	}()
	// The trial is at the backend, held there.
	waitFor(t, func() bool { return fake.Requests("/api/chat") == 1 })

	const others = 10
	answers := make(chan answer, others)
	for range others {
		go func() {
			resp, body, err := post(t, t.Context(), e.url+"/api/chat", chatBody("tiny", false, ""))
			if err != nil {
				answers <- answer{0, err.Error()}
				return
			}
			answers <- answer{resp.StatusCode, string(body)}
		}()
	}
	for range others {
		select {
		case a := <-answers:
			if a.status != http.StatusServiceUnavailable || !strings.Contains(a.body, "recovering") {
				t.Fatalf("a request while the trial runs: %d %s", a.status, a.body)
			}
		case <-time.After(20 * time.Second):
			t.Fatal("requests were let through to the half-open backend (they hang there)")
		}
	}
	fake.SetHang(false)
	if a := <-trial; a.status != http.StatusOK {
		t.Fatalf("the trial: %d %s", a.status, a.body)
	}
	if got := fake.Requests("/api/chat"); got != 1 {
		t.Fatalf("the half-open backend saw %d chat requests, want the one trial", got)
	}
	if b.Health.State() != backend.Closed {
		t.Fatalf("breaker %v after the trial succeeded", b.Health.State())
	}
	for range 3 {
		if resp, body, err := post(t, t.Context(), e.url+"/api/chat", chatBody("tiny", false, "")); err != nil || resp.StatusCode != 200 {
			t.Fatalf("after recovery: %v %s", err, body)
		}
	}
}
