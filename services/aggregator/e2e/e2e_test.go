// Package e2e runs the usage pipeline as operators run it: two drover-proxy
// processes and a drover-aggregator process (the real binaries, built by
// TestMain) with a real NATS server and a real ClickHouse server, in front
// of fake Ollama backends. Thousands of concurrent requests over both APIs,
// one proxy stopped with SIGTERM under load, and then ClickHouse must hold
// exactly what the backends reported.
package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"

	"github.com/droverhq/drover/testkit/chtest"
	"github.com/droverhq/drover/testkit/freeport"
	"github.com/droverhq/drover/testkit/natstest"
	"github.com/droverhq/drover/testkit/ollamatest"
)

var binDir string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "drover-e2e-bin")
	if err != nil {
		panic(err)
	}
	binDir = dir
	build := exec.Command("go", "build", "-o", dir+"/",
		"github.com/droverhq/drover/services/proxy/cmd/drover-proxy",
		"github.com/droverhq/drover/services/aggregator/cmd/drover-aggregator")
	build.Stdout, build.Stderr = os.Stdout, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "building binaries:", err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// proc is one child process with its log kept for failure reports.
type proc struct {
	cmd *exec.Cmd
	log *bytes.Buffer
	mu  *sync.Mutex
}

type lockedWriter struct {
	mu *sync.Mutex
	b  *bytes.Buffer
}

func (w lockedWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.Write(p)
}

func start(t *testing.T, name string, env []string) *proc {
	t.Helper()
	p := &proc{cmd: exec.Command(filepath.Join(binDir, name)), log: &bytes.Buffer{}, mu: &sync.Mutex{}}
	p.cmd.Env = append(os.Environ(), env...)
	// Its own working directory: relative defaults (auth.state_file's
	// ./data/keys.json) stay out of the source tree and apart per process.
	p.cmd.Dir = t.TempDir()
	p.cmd.Stdout = lockedWriter{p.mu, p.log}
	p.cmd.Stderr = lockedWriter{p.mu, p.log}
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if p.cmd.ProcessState == nil {
			p.cmd.Process.Signal(syscall.SIGTERM)
			p.cmd.Wait()
		}
		if t.Failed() {
			p.mu.Lock()
			t.Logf("--- %s log:\n%s", name, tail(p.log.String(), 3000))
			p.mu.Unlock()
		}
	})
	return p
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

// freeAddr is a loopback address for a server a test starts
// (testkit/freeport: outside the kernel's ephemeral range).
func freeAddr(t *testing.T) string {
	addr, err := freeport.Addr()
	if err != nil {
		t.Fatal(err)
	}
	return addr
}

func waitHTTP(t *testing.T, url string) {
	t.Helper()
	waitFor(t, 30*time.Second, url+" to come up", func() bool {
		resp, err := http.Get(url)
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode < 500
	})
}

// waitFor polls cond until it holds, failing the test after timeout.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// adminKey is the e2e proxies' admin key: /health shows the publisher's
// counters to admins only.
const adminKey = "key-admin-00000"

// usageStats reads a proxy's publisher counters from its /health.
func usageStats(base string) (spooled, replayed uint64) {
	req, _ := http.NewRequest(http.MethodGet, base+"/health", nil)
	req.Header.Set("Authorization", "Bearer "+adminKey)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, 0
	}
	defer resp.Body.Close()
	var h struct {
		Usage struct {
			Spooled  uint64 `json:"spooled"`
			Replayed uint64 `json:"replayed"`
		} `json:"usage_pipeline"`
	}
	json.NewDecoder(resp.Body).Decode(&h) //nolint:errcheck // zero counts on a bad answer
	return h.Usage.Spooled, h.Usage.Replayed
}

// metric sums the samples of a Prometheus counter or gauge served at url
// (a proxy's /metrics wants an admin key; the aggregator's ignores it).
func metric(url, name string) float64 {
	req, _ := http.NewRequest(http.MethodGet, url, nil)
	req.Header.Set("Authorization", "Bearer "+adminKey)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	var sum float64
	for _, line := range strings.Split(string(body), "\n") {
		rest, ok := strings.CutPrefix(line, name)
		if !ok || rest == "" || (rest[0] != ' ' && rest[0] != '{') {
			continue
		}
		var v float64
		if _, err := fmt.Sscan(rest[strings.LastIndexByte(rest, ' ')+1:], &v); err == nil {
			sum += v
		}
	}
	return sum
}

type key struct{ model, apiKey string }

type tokens struct{ in, out int64 }

// request is one client call and how to read its token counts.
type request struct {
	path, body string
	stream     bool
	openai     bool
}

var requests = []request{
	{"/api/chat", `{"model":"tiny","messages":[{"role":"user","content":"hello there"}],"stream":false}`, false, false},
	{"/api/chat", `{"model":"tiny2","messages":[{"role":"user","content":"one two three"}]}`, true, false},
	{"/api/generate", `{"model":"tiny","prompt":"say something","options":{"num_predict":7}}`, true, false},
	{"/v1/chat/completions", `{"model":"tiny","messages":[{"role":"user","content":"hi"}]}`, false, true},
	{"/v1/chat/completions", `{"model":"tiny2","messages":[{"role":"user","content":"hi you"}],"stream":true,"stream_options":{"include_usage":true}}`, true, true},
	// The client does not ask for usage; Drover must still count it.
	{"/v1/chat/completions", `{"model":"tiny","messages":[{"role":"user","content":"a b c d"}],"stream":true}`, true, true},
}

// send runs one request and returns the counts the backend reported as the
// client saw them (ok false: the request did not complete).
func send(ctx context.Context, client *http.Client, base, apiKey string, r request) (tokens, string, bool) {
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, base+r.path, strings.NewReader(r.body))
	req.Header.Set("Authorization", "Bearer "+apiKey)
	req.Header.Set("Content-Type", "application/json")
	resp, err := client.Do(req)
	if err != nil {
		return tokens{}, "", false
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != 200 {
		return tokens{}, "", false
	}
	var model struct{ Model string }
	json.Unmarshal(body, &model) //nolint:errcheck
	return parseTokens(r, body)
}

func parseTokens(r request, body []byte) (tokens, string, bool) {
	var last []byte
	for _, line := range bytes.Split(bytes.TrimSpace(body), []byte("\n")) {
		line = bytes.TrimSpace(bytes.TrimPrefix(bytes.TrimSpace(line), []byte("data:")))
		if len(line) == 0 || string(line) == "[DONE]" {
			continue
		}
		last = line
	}
	if r.openai {
		var doc struct {
			Model string
			Usage *struct {
				PromptTokens     int64 `json:"prompt_tokens"`
				CompletionTokens int64 `json:"completion_tokens"`
			}
		}
		if json.Unmarshal(last, &doc) != nil {
			return tokens{}, "", false
		}
		if doc.Usage == nil {
			// Not asked for: the fake's deterministic rule (words + 4 per
			// message in, default chunks out) says what the backend counted.
			return tokens{in: 4 + 4, out: ollamatest.DefaultChunks}, "tiny", true
		}
		return tokens{doc.Usage.PromptTokens, doc.Usage.CompletionTokens}, "", true
	}
	var doc struct {
		Done            bool  `json:"done"`
		PromptEvalCount int64 `json:"prompt_eval_count"`
		EvalCount       int64 `json:"eval_count"`
	}
	if json.Unmarshal(last, &doc) != nil || !doc.Done {
		return tokens{}, "", false
	}
	return tokens{doc.PromptEvalCount, doc.EvalCount}, "", true
}

func modelOf(body string) string {
	var m struct{ Model string }
	json.Unmarshal([]byte(body), &m) //nolint:errcheck
	return m.Model
}

func TestPipelineExactUnderLoadAndSIGTERM(t *testing.T) {
	runPipeline(t, func(p *pipeline) {
		// SIGTERM one proxy under load: it drains, then publishes or
		// spools every event before it exits.
		p.proxies[1].cmd.Process.Signal(syscall.SIGTERM)
	})
}

// TestPipelineExactAcrossNATSAndClickHouseOutages takes NATS and then
// ClickHouse away while requests keep coming: proxies keep serving and
// spool, the aggregator holds its batch and retries, and afterwards the
// totals are still exact. Each outage lasts until it has been seen to
// bite.
func TestPipelineExactAcrossNATSAndClickHouseOutages(t *testing.T) {
	runPipeline(t, func(p *pipeline) {
		p.ns.Stop()
		for i, base := range p.bases {
			waitFor(t, 60*time.Second, fmt.Sprintf("proxy %d to spool usage events while NATS is down", i), func() bool {
				spooled, _ := usageStats(base)
				return spooled > 0
			})
		}
		p.ns.Restart()
		for i, base := range p.bases {
			waitFor(t, 60*time.Second, fmt.Sprintf("proxy %d to replay its spool", i), func() bool {
				spooled, replayed := usageStats(base)
				return replayed > 0 && replayed >= spooled
			})
		}
		failures := "http://" + p.aggMetrics + "/metrics"
		p.ch.Stop()
		waitFor(t, 60*time.Second, "the aggregator to fail an insert while ClickHouse is down", func() bool {
			return metric(failures, "drover_aggregator_insert_failures_total") > 0
		})
		p.ch.Restart()
		for i, base := range p.bases {
			spooled, replayed := usageStats(base)
			t.Logf("proxy %d: %d events spooled, %d replayed", i, spooled, replayed)
		}
	})
}

// pipeline is what a fault can act on while the load runs.
type pipeline struct {
	ns         *natstest.Server
	ch         *chtest.Server
	proxies    []*proc
	bases      []string
	aggMetrics string
}

// runPipeline sends at least 3000 requests through two proxies, runs
// fault once half of them are sent (the load goes on meanwhile, for as
// long as fault takes), stops the proxies and checks that ClickHouse holds
// exactly what the backends reported and the clients saw.
func runPipeline(t *testing.T, fault func(*pipeline)) {
	ns := natstest.Start(t)
	ch := chtest.Start(t)
	fakes, urls := startFakes(t, 3, ollamatest.Config{ChunkDelay: 200 * time.Microsecond})
	keys := map[string]string{"team-a": "key-aaaaaaaa", "team-b": "key-bbbbbbbb"}
	common := []string{
		"DROVER_NATS_URL=" + ns.URL(),
		"DROVER_CLICKHOUSE_ADDR=" + ch.Addr(),
		"DROVER_BACKENDS=" + strings.Join(urls, ","),
		"DROVER_AUTH_KEYS=team-a:key-aaaaaaaa,team-b:key-bbbbbbbb,ops:" + adminKey + ":admin",
		"DROVER_ROUTING_MAX_CONCURRENCY=16",
		"DROVER_LOG_LEVEL=warn",
	}
	p := &pipeline{ns: ns, ch: ch, aggMetrics: freeAddr(t)}
	start(t, "drover-aggregator", append(common, "DROVER_AGGREGATOR_METRICS_LISTEN="+p.aggMetrics, "DROVER_AGGREGATOR_FLUSH_INTERVAL=200ms", "DROVER_REPLICA=agg"))
	for i := range 2 {
		addr := freeAddr(t)
		p.proxies = append(p.proxies, start(t, "drover-proxy", append(common,
			"DROVER_LISTEN="+addr, fmt.Sprintf("DROVER_REPLICA=proxy-%d", i),
			"DROVER_USAGE_SPOOL_DIR="+filepath.Join(t.TempDir(), "spool"))))
		p.bases = append(p.bases, "http://"+addr)
	}
	for _, b := range p.bases {
		waitHTTP(t, b+"/")
	}
	waitHTTP(t, "http://"+p.aggMetrics+"/health")

	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 256}, Timeout: 30 * time.Second}
	var mu sync.Mutex
	want := map[key]tokens{}
	const total = 3000
	var sent atomic.Int64
	faultDone := make(chan struct{})
	var once sync.Once
	endFault := func() { once.Do(func() { close(faultDone) }) }
	loadDone := make(chan struct{})
	go func() {
		defer close(loadDone)
		var wg sync.WaitGroup
		defer wg.Wait()
		sem := make(chan struct{}, 64)
		for i := 0; ; i++ {
			if i >= total {
				select {
				case <-faultDone:
					return
				default:
				}
			}
			sem <- struct{}{}
			sent.Add(1)
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer func() { <-sem }()
				r := requests[i%len(requests)]
				id := []string{"team-a", "team-b"}[i%2]
				tk, _, ok := send(t.Context(), client, p.bases[i%2], keys[id], r)
				if !ok {
					return // refused by a stopping proxy: never reached a backend
				}
				mu.Lock()
				k := key{modelOf(r.body), id}
				w := want[k]
				w.in += tk.in
				w.out += tk.out
				want[k] = w
				mu.Unlock()
			}()
		}
	}()
	// If the test fails in fault, the load ends too (t.Context is
	// cancelled then, so the requests left fail at once).
	t.Cleanup(func() { endFault(); <-loadDone })
	waitFor(t, 5*time.Minute, "half the requests to be sent", func() bool { return sent.Load() >= total/2 })
	fault(p)
	endFault()
	<-loadDone
	t.Logf("%d requests sent", sent.Load())
	for i, p := range p.proxies {
		p.cmd.Process.Signal(syscall.SIGTERM)
		if err := p.cmd.Wait(); err != nil && p.cmd.ProcessState.ExitCode() != 0 {
			t.Fatalf("proxy %d exited with %v", i, err)
		}
	}

	// What the backends reported, per endpoint.
	wantByEndpoint := map[string]tokens{}
	var wantAll tokens
	for _, f := range fakes {
		c := f.Counters()
		name := strings.TrimPrefix(f.URL(), "http://")
		wantByEndpoint[name] = tokens{c.PromptEvalCount, c.EvalCount}
		wantAll.in += c.PromptEvalCount
		wantAll.out += c.EvalCount
	}

	db, err := clickhouse.Open(&clickhouse.Options{Addr: []string{ch.Addr()}, Auth: clickhouse.Auth{Database: "drover", Username: "default"}})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var got tokens
	deadline := time.Now().Add(60 * time.Second)
	for {
		row := db.QueryRow(t.Context(), "SELECT sum(input_tokens) AS i, sum(output_tokens) AS o FROM token_usage_minute")
		var in, out uint64
		if err := row.Scan(&in, &out); err == nil {
			got = tokens{int64(in), int64(out)}
		}
		if got == wantAll || time.Now().After(deadline) {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	if got != wantAll {
		t.Fatalf("ClickHouse holds %+v tokens, backends reported %+v", got, wantAll)
	}

	// Per endpoint: what each backend reported.
	rows, err := db.Query(t.Context(), "SELECT endpoint, sum(input_tokens) AS i, sum(output_tokens) AS o FROM token_usage_minute GROUP BY endpoint")
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var ep string
		var in, out uint64
		rows.Scan(&ep, &in, &out)
		if w := wantByEndpoint[ep]; w != (tokens{int64(in), int64(out)}) {
			t.Errorf("endpoint %s: ClickHouse %d/%d, backend %d/%d", ep, in, out, w.in, w.out)
		}
	}
	rows.Close()

	// Per model and key: what the clients were told.
	rows, err = db.Query(t.Context(), "SELECT model, api_key, sum(input_tokens) AS i, sum(output_tokens) AS o FROM token_usage_minute GROUP BY model, api_key")
	if err != nil {
		t.Fatal(err)
	}
	seen := 0
	for rows.Next() {
		var model, apiKey string
		var in, out uint64
		rows.Scan(&model, &apiKey, &in, &out)
		if in == 0 && out == 0 {
			continue // only failed requests in this group
		}
		if w := want[key{model, apiKey}]; w != (tokens{int64(in), int64(out)}) {
			t.Errorf("model %s key %s: ClickHouse %d/%d, clients saw %d/%d", model, apiKey, in, out, w.in, w.out)
		}
		seen++
	}
	rows.Close()
	if seen != len(want) {
		t.Errorf("ClickHouse has %d (model, key) groups, clients used %d", seen, len(want))
	}

	// Per minute, endpoint, model and key: the rollup equals the raw events.
	rollup := bucketSums(t, db, "SELECT minute, endpoint, model, api_key, sum(total_tokens) AS t, sum(requests) AS n FROM token_usage_minute GROUP BY minute, endpoint, model, api_key")
	raw := bucketSums(t, db, "SELECT minute, endpoint, model, api_key, sum(total_tokens) AS t, count() AS n FROM usage_events GROUP BY minute, endpoint, model, api_key")
	if len(rollup) == 0 || len(rollup) != len(raw) {
		t.Fatalf("%d rollup buckets, %d raw buckets", len(rollup), len(raw))
	}
	for b, v := range rollup {
		if raw[b] != v {
			t.Errorf("bucket %+v: rollup %v, raw events %v", b, v, raw[b])
		}
	}
}

// startFakes starts n fake Ollama servers, stopped when the test ends.
func startFakes(t *testing.T, n int, cfg ollamatest.Config) ([]*ollamatest.Server, []string) {
	t.Helper()
	var fakes []*ollamatest.Server
	var urls []string
	for range n {
		f := ollamatest.New(cfg)
		if err := f.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(f.Close)
		fakes = append(fakes, f)
		urls = append(urls, f.URL())
	}
	return fakes, urls
}

type bucket struct {
	minute                  time.Time
	endpoint, model, apiKey string
}

func bucketSums(t *testing.T, db driver.Conn, query string) map[bucket][2]uint64 {
	t.Helper()
	rows, err := db.Query(t.Context(), query)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	out := map[bucket][2]uint64{}
	for rows.Next() {
		var b bucket
		var tok, n uint64
		if err := rows.Scan(&b.minute, &b.endpoint, &b.model, &b.apiKey, &tok, &n); err != nil {
			t.Fatal(err)
		}
		out[b] = [2]uint64{tok, n}
	}
	return out
}
