package suite

import (
	"context"
	"net/http/httptest"
	"net/url"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/droverhq/drover/services/bench/internal/bareproxy"
	"github.com/droverhq/drover/services/bench/internal/loadgen"
	"github.com/droverhq/drover/services/bench/internal/stubollama"
	"github.com/droverhq/drover/services/bench/internal/workload"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestRunInterleavesAndReduces(t *testing.T) {
	stub := &stubollama.Server{FailEvery: 50}
	backend := httptest.NewServer(stub)
	defer backend.Close()
	u, _ := url.Parse(backend.URL)
	var targets []Target
	targets = append(targets, Target{Name: Direct, URL: backend.URL})
	for _, name := range []string{Bare, Drover} { // a second bare proxy stands in for Drover
		p, err := bareproxy.Start("127.0.0.1:0", u)
		if err != nil {
			t.Fatal(err)
		}
		defer p.Close(context.Background())
		targets = append(targets, Target{Name: name, URL: p.URL})
	}
	for i := range targets {
		targets[i].Client = loadgen.NewClient(5 * time.Second)
		defer targets[i].Client.CloseIdleConnections()
	}
	ws, err := workload.Select("chat,chat-stream")
	if err != nil {
		t.Fatal(err)
	}
	rows, err := Run(context.Background(), Plan{
		Targets: targets, Workloads: ws,
		Modes:    []Mode{{Closed: true, Conns: 8}, {Rate: 300}},
		Duration: 200 * time.Millisecond, Warmup: 50 * time.Millisecond, Rounds: 2,
		Pick: Median, MaxInFlight: 256,
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(rows) != 2*2*3 {
		t.Fatalf("%d rows, want 12", len(rows))
	}
	want := []struct{ target, mode, workload string }{
		{Direct, "closed c=8", "chat"}, {Bare, "closed c=8", "chat"}, {Drover, "closed c=8", "chat"},
		{Direct, "open 300/s", "chat"}, {Bare, "open 300/s", "chat"}, {Drover, "open 300/s", "chat"},
		{Direct, "closed c=8", "chat-stream"},
	}
	var ok, errs int
	for i, r := range rows {
		if i < len(want) && (r.Target != want[i].target || r.Mode != want[i].mode || r.Workload != want[i].workload) {
			t.Errorf("row %d is %s/%s/%s, want %v", i, r.Target, r.Mode, r.Workload, want[i])
		}
		if len(r.Rounds) != 2 {
			t.Errorf("row %d has %d rounds", i, len(r.Rounds))
		}
		if r.Summary.OK != r.Rounds[0].OK+r.Rounds[1].OK || r.Summary.Errors != r.Rounds[0].Errors+r.Rounds[1].Errors {
			t.Errorf("row %d totals %+v do not add up from %+v", i, r.Summary, r.Rounds)
		}
		ok += r.Summary.OK
		errs += r.Summary.Errors
	}
	// Warm-up requests reach the backend too, so measured counts are a part.
	if int64(ok+errs) > stub.Served() || errs == 0 || int64(errs) > stub.Failed() {
		t.Errorf("measured ok %d errors %d; backend served %d failed %d", ok, errs, stub.Served(), stub.Failed())
	}
}

func TestReduce(t *testing.T) {
	ms := time.Millisecond
	rounds := []loadgen.Summary{
		{ReqPerSec: 100, P50: 3 * ms, P99: 9 * ms, OK: 10, Errors: 1},
		{ReqPerSec: 300, P50: 1 * ms, P99: 7 * ms, OK: 20},
		{ReqPerSec: 200, P50: 2 * ms, P99: 8 * ms, OK: 30, Errors: 2},
	}
	cases := []struct {
		name   string
		rounds []loadgen.Summary
		pick   Pick
		want   loadgen.Summary
	}{
		{"median odd", rounds, Median, loadgen.Summary{ReqPerSec: 200, P50: 2 * ms, P99: 8 * ms, OK: 60, Errors: 3}},
		{"best", rounds, Best, loadgen.Summary{ReqPerSec: 300, P50: 1 * ms, P99: 7 * ms, OK: 60, Errors: 3}},
		{"median even", rounds[:2], Median, loadgen.Summary{ReqPerSec: 200, P50: 2 * ms, P99: 8 * ms, OK: 30, Errors: 1}},
		{"single", rounds[:1], Median, rounds[0]},
	}
	for _, c := range cases {
		if got := reduce(c.rounds, c.pick); got != c.want {
			t.Errorf("%s: got %+v, want %+v", c.name, got, c.want)
		}
	}
}
