package loadgen

import (
	"context"
	"net/http"
	"net/http/httptest"
	"net/url"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/droverhq/drover/services/bench/internal/bareproxy"
	"github.com/droverhq/drover/services/bench/internal/stubollama"
	"github.com/droverhq/drover/services/bench/internal/workload"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// setup starts a stub backend and a bare proxy in front of it and returns
// the proxy's URL; everything stops at test cleanup.
func setup(t *testing.T, stub *stubollama.Server) string {
	t.Helper()
	backend := httptest.NewServer(stub)
	t.Cleanup(backend.Close)
	u, err := url.Parse(backend.URL)
	if err != nil {
		t.Fatal(err)
	}
	proxy, err := bareproxy.Start("127.0.0.1:0", u)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := proxy.Close(ctx); err != nil {
			t.Errorf("closing proxy: %v", err)
		}
	})
	return proxy.URL
}

func mustWorkload(t *testing.T, name string) workload.Workload {
	t.Helper()
	ws, err := workload.Select(name)
	if err != nil {
		t.Fatal(err)
	}
	return ws[0]
}

// run is Closed or Open with the test's parameters filled in.
type run func(ctx context.Context, t *testing.T, base string, w workload.Workload) Result

func closedRun(ctx context.Context, t *testing.T, base string, w workload.Workload) Result {
	c := NewClient(10 * time.Second)
	defer c.CloseIdleConnections()
	r, err := Closed(ctx, c, base, w, 16, 300*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func openRun(ctx context.Context, t *testing.T, base string, w workload.Workload) Result {
	c := NewClient(10 * time.Second)
	defer c.CloseIdleConnections()
	r, err := Open(ctx, c, base, w, 400, 300*time.Millisecond, 1024)
	if err != nil {
		t.Fatal(err)
	}
	if want := 120; r.OK+r.Errors != want {
		t.Errorf("open loop at 400/s for 0.3s sent %d requests, want %d", r.OK+r.Errors, want)
	}
	return r
}

// TestCounts checks that every request the backend saw is counted once,
// as ok or as an error, and that injected failures are the errors.
func TestCounts(t *testing.T) {
	modes := []struct {
		name string
		run  run
	}{{"closed", closedRun}, {"open", openRun}}
	cases := []struct {
		workload  string
		failEvery int64
		failMode  string
		wantKind  string
	}{
		{"chat", 0, "", ""},
		{"chat-stream", 0, "", ""},
		{"openai-stream", 0, "", ""},
		{"chat", 7, stubollama.Fail500, "status 500"},
		{"chat-stream", 5, stubollama.Fail500, "status 500"},
		{"chat-stream", 5, stubollama.FailTruncate, "read body: unexpected EOF"},
		{"openai-stream", 5, stubollama.FailTruncate, "read body: unexpected EOF"},
	}
	for _, m := range modes {
		for _, c := range cases {
			t.Run(m.name+"/"+c.workload+"/fail"+c.failMode, func(t *testing.T) {
				stub := &stubollama.Server{FailEvery: c.failEvery, FailMode: c.failMode}
				base := setup(t, stub)
				r := m.run(context.Background(), t, base, mustWorkload(t, c.workload))
				s := r.Summarize()

				if got := int64(r.OK + r.Errors); got != stub.Served() {
					t.Errorf("counted %d requests (ok %d + errors %d), backend served %d", got, r.OK, r.Errors, stub.Served())
				}
				if int64(r.Errors) != stub.Failed() {
					t.Errorf("counted %d errors, backend failed %d; kinds %v", r.Errors, stub.Failed(), r.Kinds)
				}
				if c.wantKind != "" && r.Kinds[c.wantKind] != r.Errors {
					t.Errorf("error kinds %v, want all %d as %q", r.Kinds, r.Errors, c.wantKind)
				}
				// How many a 300ms closed loop gets through depends on the
				// machine; what matters is that both outcomes were counted.
				if r.OK == 0 || (c.failEvery > 0 && r.Errors == 0) {
					t.Errorf("%d ok, %d errors: the run exercised too little", r.OK, r.Errors)
				}
				if len(r.Latencies) != r.OK {
					t.Errorf("%d latencies for %d ok requests", len(r.Latencies), r.OK)
				}
				if s.P50 <= 0 || s.P99 < s.P50 || s.ReqPerSec <= 0 {
					t.Errorf("implausible summary %+v", s)
				}
			})
		}
	}
}

// TestOpenLoopKeepsSchedule checks that a target slower than the offered
// rate shows as latency measured from the schedule, not as a lower offered
// rate: the backend below serves one request per 10 ms (100/s), is offered
// 200/s for 0.5 s, and must still receive all 100 requests.
func TestOpenLoopKeepsSchedule(t *testing.T) {
	var mu sync.Mutex
	stub := &stubollama.Server{}
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		time.Sleep(10 * time.Millisecond) // a slow backend: the delay is the fault
		mu.Unlock()
		stub.ServeHTTP(w, r)
	}))
	defer backend.Close()
	c := NewClient(10 * time.Second)
	defer c.CloseIdleConnections()
	r, err := Open(context.Background(), c, backend.URL, mustWorkload(t, "chat"), 200, 500*time.Millisecond, 1024)
	if err != nil {
		t.Fatal(err)
	}
	s := r.Summarize()
	if r.OK != 100 || r.Errors != 0 {
		t.Fatalf("ok %d errors %d (%v), want 100 and 0", r.OK, r.Errors, r.Kinds)
	}
	// The last request is due at 0.5 s and served at about 1 s.
	if s.P99 < 300*time.Millisecond {
		t.Errorf("p99 %v: queueing behind a slow target is not in the latency", s.P99)
	}
	if s.ReqPerSec != 200 {
		t.Errorf("req/s %v, want the offered 200", s.ReqPerSec)
	}
}

// TestOpenLoopInFlightLimit checks that requests due while the in-flight
// limit is reached are counted as dropped and never sent.
func TestOpenLoopInFlightLimit(t *testing.T) {
	release := make(chan struct{})
	var arrived atomic.Int64
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		arrived.Add(1)
		<-release
		(&stubollama.Server{}).ServeHTTP(w, r)
	}))
	defer backend.Close()
	c := NewClient(10 * time.Second)
	defer c.CloseIdleConnections()
	done := make(chan Result)
	go func() {
		r, err := Open(context.Background(), c, backend.URL, mustWorkload(t, "chat"), 200, 250*time.Millisecond, 2)
		if err != nil {
			t.Error(err)
		}
		done <- r
	}()
	// The schedule is a matter of time: hold both requests for longer than
	// its 250ms (a delay on purpose, not a wait for an event).
	time.Sleep(400 * time.Millisecond)
	close(release)
	r := <-done
	if r.OK != 2 || r.Errors != 48 || r.Kinds["dropped: in-flight limit reached"] != 48 {
		t.Errorf("ok %d errors %d kinds %v, want 2 ok and 48 dropped", r.OK, r.Errors, r.Kinds)
	}
	if arrived.Load() != 2 {
		t.Errorf("backend saw %d requests, want 2", arrived.Load())
	}
}

func TestPercentile(t *testing.T) {
	var s []time.Duration
	for i := 1; i <= 100; i++ {
		s = append(s, time.Duration(i))
	}
	cases := []struct {
		p    float64
		want time.Duration
	}{{0.5, 50}, {0.99, 99}, {1, 100}, {0.001, 1}}
	for _, c := range cases {
		if got := Percentile(s, c.p); got != c.want {
			t.Errorf("p%v = %v, want %v", c.p, got, c.want)
		}
	}
	if Percentile(nil, 0.5) != 0 {
		t.Error("empty percentile should be 0")
	}
}

func TestBadArguments(t *testing.T) {
	c := NewClient(time.Second)
	w := mustWorkload(t, "chat")
	if _, err := Closed(context.Background(), c, "http://127.0.0.1:1", w, 0, time.Second); err == nil {
		t.Error("Closed with 0 conns: want error")
	}
	if _, err := Open(context.Background(), c, "http://127.0.0.1:1", w, 0, time.Second, 10); err == nil {
		t.Error("Open at rate 0: want error")
	}
}
