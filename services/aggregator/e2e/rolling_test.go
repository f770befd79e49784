package e2e

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"

	"github.com/droverhq/drover/testkit/chtest"
	"github.com/droverhq/drover/testkit/natstest"
	"github.com/droverhq/drover/testkit/ollamatest"
)

var buildLB = sync.OnceValue(func() error {
	out, err := exec.Command("go", "build", "-o", binDir+"/", "github.com/droverhq/drover/services/droverctl/cmd/drover-lb").CombinedOutput()
	if err != nil {
		return fmt.Errorf("building drover-lb: %v\n%s", err, out)
	}
	return nil
})

// TestRollingRestartBehindLoadBalancer is a rolling restart of the local
// stack (deploy/local/run.sh's topology: NATS, ClickHouse, the aggregator,
// two proxies behind drover-lb): under steady load, one proxy gets SIGTERM,
// drains, exits and starts again on the same port with the same spool, and
// then the other does. Clients talk to the load balancer only. No request
// may fail except with a 503 from a draining replica (drover-proxy closes
// its listener at once, so in practice the load balancer moves every new
// request to the other replica and none fails), and ClickHouse must hold
// exactly the tokens the backends reported and one event per request.
func TestRollingRestartBehindLoadBalancer(t *testing.T) {
	if err := buildLB(); err != nil {
		t.Fatal(err)
	}
	ns := natstest.Start(t)
	ch := chtest.Start(t)
	// Slow enough that requests are in flight when SIGTERM arrives.
	fakes, urls := startFakes(t, 2, ollamatest.Config{ChunkDelay: 2 * time.Millisecond})
	common := []string{
		"DROVER_NATS_URL=" + ns.URL(),
		"DROVER_CLICKHOUSE_ADDR=" + ch.Addr(),
		"DROVER_BACKENDS=" + strings.Join(urls, ","),
		"DROVER_AUTH_KEYS=team-a:key-aaaaaaaa,team-b:key-bbbbbbbb,ops:" + adminKey + ":admin",
		"DROVER_ROUTING_MAX_CONCURRENCY=16",
		"DROVER_LOG_LEVEL=warn",
	}
	aggMetrics := freeAddr(t)
	start(t, "drover-aggregator", append(common, "DROVER_AGGREGATOR_METRICS_LISTEN="+aggMetrics,
		"DROVER_AGGREGATOR_FLUSH_INTERVAL=200ms", "DROVER_REPLICA=agg"))

	// Ports below the ephemeral range: while a replica is down, one of the
	// many client connections could otherwise take its port as a source
	// port and the restart could not bind it.
	addrs := []string{fixedAddr(t), fixedAddr(t)}
	spools := []string{filepath.Join(t.TempDir(), "spool-1"), filepath.Join(t.TempDir(), "spool-2")}
	startProxy := func(i, generation int) *proc {
		p := start(t, "drover-proxy", append(common, "DROVER_LISTEN="+addrs[i],
			fmt.Sprintf("DROVER_REPLICA=proxy-%d-gen%d", i+1, generation), "DROVER_USAGE_SPOOL_DIR="+spools[i]))
		waitHTTP(t, "http://"+addrs[i]+"/")
		return p
	}
	proxies := []*proc{startProxy(0, 1), startProxy(1, 1)}
	lbAddr := freeAddr(t)
	startLB(t, lbAddr, "http://"+addrs[0], "http://"+addrs[1])
	waitHTTP(t, "http://"+aggMetrics+"/health")
	base := "http://" + lbAddr
	waitHTTP(t, base+"/")

	// Steady load until stop is closed.
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}, Timeout: 30 * time.Second}
	keys := []string{"key-aaaaaaaa", "key-bbbbbbbb"}
	var ok, refused503 atomic.Int64
	var mu sync.Mutex
	var failures []string
	var seen tokens
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for w := range 24 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				r := requests[(w+i)%len(requests)]
				tk, code, err := sendStatus(t.Context(), client, base, keys[(w+i)%2], r)
				switch {
				case err == nil && code == http.StatusOK:
					ok.Add(1)
					mu.Lock()
					seen.in += tk.in
					seen.out += tk.out
					mu.Unlock()
				case err == nil && code == http.StatusServiceUnavailable:
					refused503.Add(1)
				default:
					mu.Lock()
					failures = append(failures, fmt.Sprintf("%s: status %d, %v", r.path, code, err))
					mu.Unlock()
				}
			}
		}()
	}

	// Roll: each replica in turn gets SIGTERM under load, drains, exits
	// cleanly and comes back on the same port and spool.
	served := func(i int) float64 { return metric("http://"+addrs[i]+"/metrics", "drover_requests_total") }
	waitFor(t, 60*time.Second, "load through both replicas", func() bool { return served(0) > 0 && served(1) > 0 })
	for i := range proxies {
		before := ok.Load()
		old := proxies[i]
		old.cmd.Process.Signal(syscall.SIGTERM) //nolint:errcheck
		if err := old.cmd.Wait(); err != nil {
			t.Fatalf("proxy %d exited with %v after SIGTERM", i+1, err)
		}
		mid := ok.Load()
		waitFor(t, 60*time.Second, "load to go on through the other replica", func() bool { return ok.Load() >= mid+50 })
		proxies[i] = startProxy(i, 2)
		waitFor(t, 60*time.Second, fmt.Sprintf("restarted proxy %d to serve requests (the load balancer taking it back)", i+1),
			func() bool { return served(i) > 0 })
		t.Logf("replica %d restarted; %d requests completed meanwhile", i+1, ok.Load()-before)
	}
	// Enough requests for exact totals to mean something, however fast the
	// roll went.
	waitFor(t, 60*time.Second, "500 requests in all", func() bool { return ok.Load() >= 500 })
	close(stop)
	wg.Wait()
	t.Logf("%d requests ok, %d answered 503 by a draining replica, %d failed", ok.Load(), refused503.Load(), len(failures))
	if len(failures) > 0 {
		t.Fatalf("%d requests failed during the rolling restart, e.g. %v", len(failures), failures[:min(5, len(failures))])
	}

	// Stop the proxies: every usage event is published or spooled first.
	for i, p := range proxies {
		p.cmd.Process.Signal(syscall.SIGTERM) //nolint:errcheck
		if err := p.cmd.Wait(); err != nil {
			t.Fatalf("proxy %d exited with %v", i+1, err)
		}
	}
	var backend tokens
	for _, f := range fakes {
		c := f.Counters()
		backend.in += c.PromptEvalCount
		backend.out += c.EvalCount
	}
	if backend != seen {
		t.Errorf("backends reported %+v tokens, clients saw %+v", backend, seen)
	}

	db, err := clickhouse.Open(&clickhouse.Options{Addr: []string{ch.Addr()}, Auth: clickhouse.Auth{Database: "drover", Username: "default"}})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var got tokens
	var events, ids uint64
	for deadline := time.Now().Add(60 * time.Second); ; {
		var in, out uint64
		if err := db.QueryRow(t.Context(), "SELECT sum(input_tokens) AS i, sum(output_tokens) AS o FROM token_usage_minute").Scan(&in, &out); err == nil {
			got = tokens{int64(in), int64(out)}
		}
		if got == backend || time.Now().After(deadline) {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	if got != backend {
		t.Fatalf("ClickHouse holds %+v tokens, the backends reported %+v: usage lost or doubled in the restart", got, backend)
	}
	if err := db.QueryRow(t.Context(), "SELECT count() AS n, uniqExact(id) AS u FROM usage_events").Scan(&events, &ids); err != nil {
		t.Fatal(err)
	}
	if events != ids || int64(events) != ok.Load()+refused503.Load() {
		t.Errorf("usage_events: %d rows, %d ids; clients completed %d requests (+%d refused with 503)", events, ids, ok.Load(), refused503.Load())
	}
}

// fixedAddr returns a free 127.0.0.1 port below Linux's ephemeral range
// (32768 and up), so that no outgoing connection takes it.
func fixedAddr(t *testing.T) string {
	t.Helper()
	for range 1000 {
		addr := fmt.Sprintf("127.0.0.1:%d", 20000+rand.IntN(12000))
		if l, err := net.Listen("tcp", addr); err == nil {
			l.Close()
			return addr
		}
	}
	t.Fatal("no free port below 32000")
	return ""
}

// startLB runs drover-lb, the local stack's load balancer, over the replicas.
func startLB(t *testing.T, listen string, replicas ...string) {
	t.Helper()
	p := &proc{cmd: exec.Command(filepath.Join(binDir, "drover-lb"), append([]string{"-listen", listen}, replicas...)...),
		log: &bytes.Buffer{}, mu: &sync.Mutex{}}
	p.cmd.Stdout = lockedWriter{p.mu, p.log}
	p.cmd.Stderr = lockedWriter{p.mu, p.log}
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		p.cmd.Process.Signal(syscall.SIGTERM) //nolint:errcheck
		p.cmd.Wait()                          //nolint:errcheck
		if t.Failed() {
			p.mu.Lock()
			t.Logf("--- drover-lb log:\n%s", tail(p.log.String(), 3000))
			p.mu.Unlock()
		}
	})
}

// sendStatus is send with the status code: the token counts the client saw
// for a 200, the code otherwise.
func sendStatus(ctx context.Context, client *http.Client, base, apiKey string, r request) (tokens, int, error) {
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, base+r.path, strings.NewReader(r.body))
	req.Header.Set("Authorization", "Bearer "+apiKey)
	req.Header.Set("Content-Type", "application/json")
	resp, err := client.Do(req)
	if err != nil {
		return tokens{}, 0, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return tokens{}, resp.StatusCode, fmt.Errorf("reading the body: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		return tokens{}, resp.StatusCode, nil
	}
	tk, _, ok := parseTokens(r, body)
	if !ok {
		return tokens{}, resp.StatusCode, fmt.Errorf("incomplete reply %.200q", body)
	}
	return tk, resp.StatusCode, nil
}
