package cache

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time      { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) add(d time.Duration) { c.mu.Lock(); c.t = c.t.Add(d); c.mu.Unlock() }

func newTest(t *testing.T, fetch Fetch[int]) (*Cache[int], *clock) {
	c := New(fetch, Options{TTL: 10 * time.Second, Stale: 60 * time.Second, ErrorTTL: time.Second})
	clk := &clock{t: time.Unix(1000, 0)}
	c.now = clk.now
	t.Cleanup(c.Close)
	return c, clk
}

// waitCounter is a caller's context that counts how often Get reached
// its wait (Get reads ctx.Done only to wait for a fetch).
type waitCounter struct {
	context.Context
	n *atomic.Int64
}

func (w waitCounter) Done() <-chan struct{} {
	w.n.Add(1)
	return w.Context.Done()
}

// Every caller is waiting before the one fetch returns, so none of them
// can be served from a value stored by an earlier fetch: one fetch for all
// of them means they were coalesced.
func TestConcurrentGetsCoalesce(t *testing.T) {
	const callers = 200
	var fetches, waiting atomic.Int64
	c, _ := newTest(t, func(ctx context.Context, key string) (int, error) {
		fetches.Add(1)
		deadline := time.Now().Add(5 * time.Second)
		for waiting.Load() < callers {
			if time.Now().After(deadline) {
				return 0, errors.New("not every caller came to wait for the fetch")
			}
			time.Sleep(time.Millisecond) // polling the count, with a deadline
		}
		return 42, nil
	})
	ctx := waitCounter{context.Background(), &waiting}
	var wg sync.WaitGroup
	for range callers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if v, err := c.Get(ctx, "k"); err != nil || v != 42 {
				t.Errorf("got %d %v", v, err)
			}
		}()
	}
	wg.Wait()
	if n := fetches.Load(); n != 1 {
		t.Fatalf("%d fetches for %d waiting callers, want 1", n, callers)
	}
}

func TestStaleWhileRevalidate(t *testing.T) {
	var fetches atomic.Int64
	gate := make(chan struct{}, 10)
	c, clk := newTest(t, func(ctx context.Context, key string) (int, error) {
		n := fetches.Add(1)
		if n > 1 {
			<-gate
		}
		return int(n), nil
	})
	if v, _ := c.Get(context.Background(), "k"); v != 1 {
		t.Fatalf("first %d", v)
	}
	clk.add(30 * time.Second) // stale
	for range 50 {
		if v, err := c.Get(context.Background(), "k"); v != 1 || err != nil {
			t.Fatalf("stale read gave %d %v", v, err)
		}
	}
	gate <- struct{}{}
	waitFor(t, func() bool { v, _ := c.Peek("k"); return v == 2 })
	if n := fetches.Load(); n != 2 {
		t.Fatalf("%d fetches, want 2 (one background refresh)", n)
	}
	clk.add(2 * time.Minute) // too old to serve
	gate <- struct{}{}
	if v, _ := c.Get(context.Background(), "k"); v != 3 {
		t.Fatalf("expired read gave %d, want a fresh fetch", v)
	}
}

func TestErrorCachedThenRetried(t *testing.T) {
	var fetches atomic.Int64
	c, clk := newTest(t, func(ctx context.Context, key string) (int, error) {
		if fetches.Add(1) == 1 {
			return 0, errors.New("down")
		}
		return 7, nil
	})
	for range 5 {
		if _, err := c.Get(context.Background(), "k"); err == nil {
			t.Fatal("want the cached error")
		}
	}
	if fetches.Load() != 1 {
		t.Fatalf("error not cached: %d fetches", fetches.Load())
	}
	clk.add(2 * time.Second)
	if v, err := c.Get(context.Background(), "k"); v != 7 || err != nil {
		t.Fatalf("got %d %v", v, err)
	}
}

func TestInvalidateDuringFetchDiscardsResult(t *testing.T) {
	var fetches atomic.Int64
	started, release := make(chan struct{}, 2), make(chan struct{})
	c, _ := newTest(t, func(ctx context.Context, key string) (int, error) {
		n := fetches.Add(1)
		started <- struct{}{}
		if n == 1 {
			<-release
		}
		return int(n), nil
	})
	done := make(chan int)
	go func() { v, _ := c.Get(context.Background(), "k"); done <- v }()
	<-started
	c.Invalidate("k")
	close(release)
	if v := <-done; v != 2 {
		t.Fatalf("got %d: a result fetched before invalidation was kept", v)
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met in time")
		}
		time.Sleep(time.Millisecond)
	}
}
