package fleet

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/droverhq/drover/pkg/config"
	"github.com/droverhq/drover/services/proxy/internal/backend"
)

// A half-open backend is a candidate for one request at a time: of many
// concurrent requests one holds the trial (and keeps it across its own
// Candidates calls), the rest get ErrRecovering; when the holder's
// context ends without a verdict, the next request gets it. (Run with
// -race.)
func TestHalfOpenIsACandidateForOneRequest(t *testing.T) {
	f := newTestFleet(t, func(c *config.Config) {
		c.Backends = c.Backends[:1] // "o" alone
		c.Health.OpenFor, c.Health.OpenMax = 20*time.Millisecond, 20*time.Millisecond
		c.Health.ProbeInterval = time.Hour // no probe competes for the trial
	})
	if _, err := f.Candidates(t.Context(), "tiny", nil); err != nil { // warms the model list
		t.Fatal(err)
	}
	b, _ := f.Backend("o")
	b.Health.Failure(errors.New("down"), true)
	if _, err := f.Candidates(t.Context(), "tiny", nil); !errors.Is(err, ErrNoHealthy) {
		t.Fatalf("open breaker: %v", err)
	}
	waitHalfOpen(t, b)

	const n = 32
	ctxs := make([]context.Context, n)
	cancels := make([]context.CancelFunc, n)
	for i := range n {
		ctxs[i], cancels[i] = context.WithCancel(t.Context())
		defer cancels[i]()
	}
	got := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, got[i] = f.Candidates(ctxs[i], "tiny", nil, "/api/chat")
		}()
	}
	wg.Wait()
	holder := -1
	for i, err := range got {
		switch {
		case err == nil && holder >= 0:
			t.Fatalf("requests %d and %d both got the half-open backend", holder, i)
		case err == nil:
			holder = i
		case !errors.Is(err, ErrRecovering) || !errors.Is(err, ErrNoHealthy):
			t.Fatalf("request %d: %v", i, err)
		}
	}
	if holder < 0 {
		t.Fatal("no request got the half-open backend")
	}
	// The holder's later calls (a handler's check, then the attempt) keep it.
	if _, err := f.Candidates(ctxs[holder], "tiny", map[string]bool{}, "/api/chat"); err != nil {
		t.Fatalf("the holder asking again: %v", err)
	}
	// Its client leaves without a verdict: the trial is free for the next.
	cancels[holder]()
	next := (holder + 1) % n
	waitFor(t, func() bool { _, err := f.Candidates(ctxs[next], "tiny", nil); return err == nil })
	// A success closes the breaker: everyone again.
	b.Health.Success()
	for i := range n {
		if i != holder {
			if _, err := f.Candidates(ctxs[i], "tiny", nil); err != nil {
				t.Fatalf("after the trial succeeded, request %d: %v", i, err)
			}
		}
	}
}

func waitHalfOpen(t *testing.T, b *backend.Backend) {
	t.Helper()
	waitFor(t, func() bool { return b.Health.State() == backend.HalfOpen })
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met in time")
		}
		time.Sleep(2 * time.Millisecond)
	}
}
