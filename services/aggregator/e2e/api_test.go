package e2e

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"

	"github.com/droverhq/drover/testkit/chtest"
	"github.com/droverhq/drover/testkit/natstest"
	"github.com/droverhq/drover/testkit/ollamatest"
)

// TestPipelineTotalsPerAPI sends requests through each API Drover serves
// (Ollama's /api/chat, OpenAI's chat completions, Anthropic's messages and
// OpenAI's responses, each streamed and not) through a proxy, JetStream and
// the aggregator, and checks that ClickHouse's token_usage_minute_by_api
// holds, per API, exactly the tokens the backend reported while that API's
// requests ran, and that usage_events carries the same API on every row.
func TestPipelineTotalsPerAPI(t *testing.T) {
	ns, ch := natstest.Start(t).URL(), chtest.Start(t).Addr()
	fakes, urls := startFakes(t, 1, ollamatest.Config{Chunks: 5})
	common := []string{
		"DROVER_NATS_URL=" + ns,
		"DROVER_CLICKHOUSE_ADDR=" + ch,
		"DROVER_BACKENDS=" + strings.Join(urls, ","),
		"DROVER_AUTH_KEYS=team-a:key-aaaaaaaa",
		"DROVER_LOG_LEVEL=warn",
	}
	aggMetrics := freeAddr(t)
	start(t, "drover-aggregator", append(common, "DROVER_AGGREGATOR_METRICS_LISTEN="+aggMetrics, "DROVER_AGGREGATOR_FLUSH_INTERVAL=100ms", "DROVER_REPLICA=agg"))
	addr := freeAddr(t)
	start(t, "drover-proxy", append(common, "DROVER_LISTEN="+addr, "DROVER_REPLICA=proxy-0",
		"DROVER_USAGE_SPOOL_DIR="+filepath.Join(t.TempDir(), "spool")))
	base := "http://" + addr
	waitHTTP(t, base+"/")
	waitHTTP(t, "http://"+aggMetrics+"/health")

	apis := []struct {
		api    string
		path   string
		bodies []string
	}{
		{"ollama", "/api/chat", []string{
			`{"model":"tiny","messages":[{"role":"user","content":"hello there"}],"stream":false}`,
			`{"model":"tiny","messages":[{"role":"user","content":"one two three"}]}`,
		}},
		{"openai", "/v1/chat/completions", []string{
			`{"model":"tiny","messages":[{"role":"user","content":"hi"}]}`,
			`{"model":"tiny","messages":[{"role":"user","content":"hi you"}],"stream":true,"stream_options":{"include_usage":true}}`,
			`{"model":"tiny","messages":[{"role":"user","content":"a b c d"}],"stream":true}`,
		}},
		{"anthropic", "/v1/messages", []string{
			`{"model":"tiny","max_tokens":64,"messages":[{"role":"user","content":"hello from claude code"}]}`,
			`{"model":"tiny","max_tokens":64,"stream":true,"system":"be brief","messages":[{"role":"user","content":"stream it"}]}`,
		}},
		{"responses", "/v1/responses", []string{
			`{"model":"tiny","input":"hello responses"}`,
			`{"model":"tiny","input":"stream these words please","stream":true}`,
			`{"model":"tiny","instructions":"be brief","input":[{"role":"user","content":"hi"}]}`,
		}},
	}
	client := &http.Client{Timeout: 30 * time.Second}
	type sums struct{ in, out, requests int64 }
	want := map[string]sums{}
	var all sums
	for _, a := range apis {
		// Sequential, so the backend's counters move only by this API's
		// requests: the difference is what the backend reported for it.
		before := fakes[0].Counters()
		for _, body := range a.bodies {
			if err := post(t.Context(), client, base+a.path, "key-aaaaaaaa", body); err != nil {
				t.Fatalf("%s %s: %v", a.path, body, err)
			}
		}
		after := fakes[0].Counters()
		s := sums{after.PromptEvalCount - before.PromptEvalCount, after.EvalCount - before.EvalCount, int64(len(a.bodies))}
		if s.in == 0 || s.out == 0 || after.Completed-before.Completed != s.requests {
			t.Fatalf("%s: the backend counted %+v over %d completed replies: the requests exercise nothing", a.api, s, after.Completed-before.Completed)
		}
		want[a.api] = s
		all.in, all.out, all.requests = all.in+s.in, all.out+s.out, all.requests+s.requests
	}

	db, err := clickhouse.Open(&clickhouse.Options{Addr: []string{ch}, Auth: clickhouse.Auth{Database: "drover", Username: "default"}})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	read := func(query string) (map[string]sums, error) {
		rows, err := db.Query(t.Context(), query)
		if err != nil {
			return nil, err
		}
		defer rows.Close()
		out := map[string]sums{}
		for rows.Next() {
			var api string
			var in, outT, n uint64
			if err := rows.Scan(&api, &in, &outT, &n); err != nil {
				return nil, err
			}
			out[api] = sums{int64(in), int64(outT), int64(n)}
		}
		return out, rows.Err()
	}
	equal := func(got map[string]sums) bool {
		if len(got) != len(want) {
			return false
		}
		for api, w := range want {
			if got[api] != w {
				return false
			}
		}
		return true
	}
	rollup := "SELECT api, sum(input_tokens) AS i, sum(output_tokens) AS o, sum(requests) AS n FROM token_usage_minute_by_api GROUP BY api"
	var got map[string]sums
	ok := func() bool { got, _ = read(rollup); return equal(got) }
	func() {
		defer func() {
			if t.Failed() {
				t.Logf("token_usage_minute_by_api holds %+v, the backend reported %+v", got, want)
			}
		}()
		waitFor(t, 60*time.Second, "token_usage_minute_by_api to hold what the backend reported", ok)
	}()
	raw, err := read("SELECT api, sum(input_tokens) AS i, sum(output_tokens) AS o, count() AS n FROM usage_events GROUP BY api")
	if err != nil {
		t.Fatal(err)
	}
	if !equal(raw) {
		t.Errorf("usage_events by api %+v, backend reported %+v", raw, want)
	}
	// One insert feeds both views in turn: the by-API one may already hold
	// a batch that token_usage_minute is about to receive.
	var in, out, n uint64
	whole := func() bool {
		err := db.QueryRow(t.Context(), "SELECT sum(input_tokens) AS i, sum(output_tokens) AS o, sum(requests) AS n FROM token_usage_minute").Scan(&in, &out, &n)
		return err == nil && (sums{int64(in), int64(out), int64(n)}) == all
	}
	func() {
		defer func() {
			if t.Failed() {
				t.Logf("token_usage_minute holds %d/%d over %d requests, the backend reported %+v", in, out, n, all)
			}
		}()
		waitFor(t, 30*time.Second, "token_usage_minute to hold what the backend reported", whole)
	}()
	var routes uint64
	if err := db.QueryRow(t.Context(), "SELECT uniqExact(route, api) AS r FROM usage_events").Scan(&routes); err != nil {
		t.Fatal(err)
	}
	if routes != uint64(len(apis)) {
		t.Errorf("usage_events has %d distinct (route, api) pairs, want %d", routes, len(apis))
	}
}

// post sends one request and reads the whole answer, which must be a 200.
func post(ctx context.Context, client *http.Client, url, key, body string) error {
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, url, strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+key)
	req.Header.Set("Content-Type", "application/json")
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("status %d: %s", resp.StatusCode, b)
	}
	return nil
}
