package server

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/droverhq/drover/services/proxy/internal/live"
	"github.com/droverhq/drover/testkit/ollamatest"
)

// sseClient opens /api/usage-stream; next returns the next snapshot.
type sseClient struct {
	resp *http.Response
	sc   *bufio.Scanner
}

func openSSE(ctx context.Context, c *http.Client, url string) (*sseClient, error) {
	return openSSEAs(ctx, c, url, nil)
}

// openSSEAs opens /api/usage-stream with auth, if set, adding the key (as
// ?api_key= or a header).
func openSSEAs(ctx context.Context, c *http.Client, url string, auth func(*http.Request)) (*sseClient, error) {
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url+"/api/usage-stream", nil)
	if auth != nil {
		auth(req)
	}
	resp, err := c.Do(req)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		resp.Body.Close()
		return nil, fmt.Errorf("status %d", resp.StatusCode)
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(nil, 1<<20)
	return &sseClient{resp: resp, sc: sc}, nil
}

func (s *sseClient) next() (map[string]any, error) {
	for s.sc.Scan() {
		if b, ok := strings.CutPrefix(s.sc.Text(), "data: "); ok {
			var m map[string]any
			return m, json.Unmarshal([]byte(b), &m)
		}
	}
	if err := s.sc.Err(); err != nil {
		return nil, err
	}
	return nil, io.EOF
}

// snapshot returns the next snapshot, decoded.
func (s *sseClient) snapshot() (live.Snapshot, error) {
	var snap live.Snapshot
	for s.sc.Scan() {
		if b, ok := strings.CutPrefix(s.sc.Text(), "data: "); ok {
			return snap, json.Unmarshal([]byte(b), &snap)
		}
	}
	if err := s.sc.Err(); err != nil {
		return snap, err
	}
	return snap, io.EOF
}

func (s *sseClient) close() { s.resp.Body.Close() }

// TestLiveStreamStress: thousands of subscribers connect and disconnect
// (some after reading, some at once, some never reading at all) while
// requests flow. Every subscriber gets a snapshot at once, requests are not
// slowed into failure, a reading subscriber keeps getting updates, every
// subscriber is removed when it goes, and (TestMain's goleak) no goroutine
// is left behind.
func TestLiveStreamStress(t *testing.T) {
	e := newEnv(t, 2, func(i int, c *ollamatest.Config) {
		c.Chunks, c.ChunkDelay = 5, 2*time.Millisecond
	}, nil)
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64, MaxConnsPerHost: 0}}
	defer client.CloseIdleConnections()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	// Requests flow the whole time.
	var done, failed atomic.Int64
	var reqs sync.WaitGroup
	for w := range 12 {
		reqs.Add(1)
		go func() {
			defer reqs.Done()
			for ctx.Err() == nil {
				body := fmt.Sprintf(`{"model":"%s","messages":[{"role":"user","content":"hi"}]}`, []string{"tiny", "tiny2"}[w%2])
				req, _ := http.NewRequestWithContext(ctx, http.MethodPost, e.url+"/api/chat", strings.NewReader(body))
				resp, err := client.Do(req)
				if err != nil {
					if ctx.Err() == nil {
						failed.Add(1)
					}
					continue
				}
				io.Copy(io.Discard, resp.Body) //nolint:errcheck
				resp.Body.Close()
				if resp.StatusCode == http.StatusOK {
					done.Add(1)
				} else {
					failed.Add(1)
				}
			}
		}()
	}

	// Stalled subscribers: connected, never reading.
	var stalled []*sseClient
	for range 50 {
		s, err := openSSE(ctx, client, e.url)
		if err != nil {
			t.Fatal(err)
		}
		stalled = append(stalled, s)
	}
	// One watcher reads everything: updates must keep coming.
	watcher, err := openSSE(ctx, client, e.url)
	if err != nil {
		t.Fatal(err)
	}
	var updates atomic.Int64
	var wwg sync.WaitGroup
	wwg.Add(1)
	go func() {
		defer wwg.Done()
		for {
			if _, err := watcher.next(); err != nil {
				return
			}
			updates.Add(1)
		}
	}()

	// Churn: 3000 subscribers, 150 at a time.
	const churn = 3000
	var noSnapshot, errs atomic.Int64
	sem := make(chan struct{}, 150)
	var subs sync.WaitGroup
	start := time.Now()
	for i := range churn {
		sem <- struct{}{}
		subs.Add(1)
		go func() {
			defer subs.Done()
			defer func() { <-sem }()
			sctx, scancel := context.WithTimeout(ctx, 10*time.Second)
			defer scancel()
			s, err := openSSE(sctx, client, e.url)
			if err != nil {
				errs.Add(1)
				return
			}
			defer s.close()
			if i%4 == 0 {
				return // gone before reading anything
			}
			first, err := s.next()
			if err != nil || first["usage_counts"] == nil {
				noSnapshot.Add(1)
				return
			}
			for range i % 3 {
				if _, err := s.next(); err != nil {
					return
				}
			}
		}()
	}
	subs.Wait()
	elapsed := time.Since(start)
	// The reading subscriber keeps getting updates under load beside the
	// stalled ones.
	before := updates.Load()
	waitFor(t, func() bool { return updates.Load() >= before+2 })

	cancel()
	reqs.Wait()
	for _, s := range stalled {
		s.close()
	}
	watcher.close()
	wwg.Wait()

	t.Logf("%d subscribers came and went in %s; %d requests done, %d failed; watcher saw %d updates", churn, elapsed, done.Load(), failed.Load(), updates.Load())
	if errs.Load() > 0 || noSnapshot.Load() > 0 {
		t.Fatalf("%d subscribers could not connect, %d got no snapshot at once", errs.Load(), noSnapshot.Load())
	}
	if failed.Load() > 0 || done.Load() < 100 {
		t.Fatalf("requests: %d done, %d failed", done.Load(), failed.Load())
	}
	waitFor(t, func() bool { return e.srv.Live.Subscribers() == 0 })
	waitFor(t, func() bool {
		s := e.srv.Live.Snapshot()
		return s.InFlight == 0 && len(s.UsageCounts) == 0
	})
}
