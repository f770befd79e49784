package analytics_test

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/droverhq/drover/pkg/analytics"
	"github.com/droverhq/drover/pkg/chstore"
	"github.com/droverhq/drover/pkg/usage"
	"github.com/droverhq/drover/testkit/chtest"
)

type fixture struct {
	srv   *chtest.Server
	store *chstore.Store
	mux   *http.ServeMux
	now   time.Time
}

func setup(t *testing.T) *fixture {
	t.Helper()
	srv := chtest.Start(t)
	store, err := chstore.Open(chstore.Options{Addr: srv.Addr(), DialTimeout: time.Second, ReadTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })
	ctx := context.Background()
	if _, err := store.Migrate(ctx); err != nil {
		t.Fatal(err)
	}
	// The newest rows sit 10 s into the previous minute: never after the
	// moment a query asks for "until now" (one minute ahead of it failed
	// whenever a test ran in the first 10 s of a minute).
	now := time.Now().UTC().Add(-time.Minute).Truncate(time.Minute)
	var rows []chstore.EventRow
	add := func(ago time.Duration, endpoint, model, key, route string, in, out int64) {
		ev := usage.Event{Schema: usage.SchemaVersion, ID: usage.NewID(), Time: now.Add(-ago).Add(10 * time.Second),
			Endpoint: endpoint, Model: model, APIKey: key, Route: route, API: usage.APIOf(route), Status: 200,
			InputTokens: usage.Int64(in), OutputTokens: usage.Int64(out), DurationMs: 100, TTFBMs: 10, Attempts: 1}
		rows = append(rows, chstore.EventRow{Event: ev, Partition: 0, Seq: uint64(len(rows) + 1)})
	}
	add(0, "gpu-a", "llama3.2:3b", "team-a", "/api/chat", 10, 20)
	add(0, "gpu-b", "llama3.2:3b", "team-b", "/v1/messages", 1, 2)
	add(2*time.Hour, "gpu-a", "llama3.2:3b", "team-a", "/v1/chat/completions", 100, 200)
	add(30*time.Hour, "gpu-b", "qwen2.5:7b", "team-a", "/v1/responses", 5, 5)
	if err := store.InsertEvents(ctx, rows); err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	analytics.NewHandler(store, testScope).Register(mux)
	return &fixture{srv: srv, store: store, mux: mux, now: now}
}

// testScope plays the proxy's part: the caller is the key id in the
// Test-Key header, limited to its own usage unless Test-All is set. With
// neither header the caller may read everything (the existing tests).
func testScope(r *http.Request) (string, bool) {
	id, all := r.Header.Get("Test-Key"), r.Header.Get("Test-All") != ""
	if id == "" && r.Header.Get("Test-Empty-Key") == "" {
		return "", true
	}
	return id, all
}

func (f *fixture) do(t *testing.T, method, target, body string) (int, map[string]any) {
	t.Helper()
	code, out, _ := f.as(t, nil, method, target, body)
	return code, out
}

// as does one request with headers and returns its status, decoded body
// and response headers.
func (f *fixture) as(t *testing.T, header map[string]string, method, target, body string) (int, map[string]any, http.Header) {
	t.Helper()
	req := httptest.NewRequest(method, target, strings.NewReader(body))
	for k, v := range header {
		req.Header.Set(k, v)
	}
	rec := httptest.NewRecorder()
	f.mux.ServeHTTP(rec, req)
	if ct := rec.Header().Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
		t.Fatalf("%s %s: content type %q", method, target, ct)
	}
	var out map[string]any
	if err := json.Unmarshal(rec.Body.Bytes(), &out); err != nil {
		t.Fatalf("%s %s: %v: %s", method, target, err, rec.Body)
	}
	return rec.Code, out, rec.Header()
}

func TestTokenCounts(t *testing.T) {
	f := setup(t)
	code, body := f.do(t, "GET", "/api/token_counts", "")
	if code != 200 || body["total_tokens"].(float64) != 343 {
		t.Fatalf("%d %v", code, body)
	}
	bd := body["breakdown"].([]any)
	if len(bd) != 3 {
		t.Fatalf("breakdown %v", bd)
	}
	first := bd[0].(map[string]any)
	if first["endpoint"] != "gpu-a" || first["model"] != "llama3.2:3b" || first["total_tokens"].(float64) != 330 || first["requests"].(float64) != 2 {
		t.Fatalf("largest first: %v", first)
	}
	code, body = f.do(t, "GET", "/api/token_counts?since=1h", "")
	if code != 200 || body["total_tokens"].(float64) != 33 {
		t.Fatalf("since=1h: %d %v", code, body)
	}
}

func TestStats(t *testing.T) {
	f := setup(t)
	code, body := f.do(t, "POST", "/api/stats", `{"model":"llama3.2:3b","since":"24h","bucket":"1h"}`)
	if code != 200 {
		t.Fatalf("%d %v", code, body)
	}
	if body["total_tokens"].(float64) != 333 || body["input_tokens"].(float64) != 111 || body["requests"].(float64) != 3 ||
		body["avg_duration_ms"].(float64) != 100 || body["bucket"] != "1h" {
		t.Fatalf("totals %v", body)
	}
	dist := body["endpoint_distribution"].(map[string]any)
	if dist["gpu-a"].(float64) != 330 || dist["gpu-b"].(float64) != 3 {
		t.Fatalf("distribution %v", dist)
	}
	series := body["time_series"].([]any)
	if len(series) != 2 {
		t.Fatalf("series %v", series)
	}
	var sum float64
	for _, p := range series {
		pt := p.(map[string]any)
		sum += pt["total_tokens"].(float64)
		if int64(pt["timestamp"].(float64))%3600 != 0 {
			t.Fatalf("bucket not on the hour: %v", pt)
		}
	}
	if sum != 333 {
		t.Fatalf("series sums to %v", sum)
	}
	// All time, automatic daily buckets.
	code, body = f.do(t, "POST", "/api/stats", `{"model":"qwen2.5:7b"}`)
	if code != 200 || body["total_tokens"].(float64) != 10 || body["bucket"] != "1d" {
		t.Fatalf("%d %v", code, body)
	}
}

func TestBadInput(t *testing.T) {
	f := setup(t)
	cases := []struct {
		method, target, body string
		code                 int
	}{
		{"POST", "/api/stats", `{"model":`, 400},
		{"POST", "/api/stats", `{}`, 400},
		{"POST", "/api/stats", `{"model":"x","since":"yesterday-ish"}`, 400},
		{"POST", "/api/stats", `{"model":"llama3.2:3b","bucket":"90s"}`, 400},
		{"POST", "/api/stats", `{"model":"llama3.2:3b","since":"1h","until":"2h"}`, 400},
		{"POST", "/api/stats", `{"model":"no-such-model"}`, 404},
		{"GET", "/api/token_counts?until=soon", "", 400},
		{"GET", "/api/token_usage?group_by=colour", "", 400},
	}
	for _, c := range cases {
		code, body := f.do(t, c.method, c.target, c.body)
		if code != c.code || body["error"] == nil || body["error"] == "" {
			t.Errorf("%s %s %s: %d %v, want %d with an error", c.method, c.target, c.body, code, body, c.code)
		}
	}
}

func TestUsage(t *testing.T) {
	f := setup(t)
	code, body := f.do(t, "GET", "/api/token_usage?group_by=key&since=7d", "")
	if code != 200 {
		t.Fatalf("%d %v", code, body)
	}
	rows := body["rows"].([]any)
	if len(rows) != 2 || rows[0].(map[string]any)["api_key"] != "team-a" || rows[0].(map[string]any)["total_tokens"].(float64) != 340 {
		t.Fatalf("rows %v", rows)
	}
}

// group_by=api and api= read token_usage_minute_by_api: which clients use
// which API, with the same totals.
func TestUsageByAPI(t *testing.T) {
	f := setup(t)
	code, body := f.do(t, "GET", "/api/token_usage?group_by=api&since=7d", "")
	if code != 200 {
		t.Fatalf("%d %v", code, body)
	}
	got := map[string]float64{}
	for _, r := range body["rows"].([]any) {
		m := r.(map[string]any)
		got[m["api"].(string)] = m["total_tokens"].(float64)
	}
	want := map[string]float64{"ollama": 30, "anthropic": 3, "openai": 300, "responses": 10}
	if len(got) != len(want) {
		t.Fatalf("group_by=api: %v, want %v", got, want)
	}
	for api, n := range want {
		if got[api] != n {
			t.Errorf("group_by=api: %s total %v, want %v (all: %v)", api, got[api], n, got)
		}
	}
	code, body = f.do(t, "GET", "/api/token_usage?group_by=key&api=anthropic&since=7d", "")
	if code != 200 {
		t.Fatalf("%d %v", code, body)
	}
	rows := body["rows"].([]any)
	if len(rows) != 1 || rows[0].(map[string]any)["api_key"] != "team-b" || rows[0].(map[string]any)["total_tokens"].(float64) != 3 {
		t.Fatalf("api=anthropic by key: %v", rows)
	}
}

func TestClickHouseDown(t *testing.T) {
	f := setup(t)
	f.srv.Stop()
	for _, c := range []struct{ method, target, body string }{
		{"GET", "/api/token_counts", ""},
		{"POST", "/api/stats", `{"model":"llama3.2:3b"}`},
		{"GET", "/api/token_usage", ""},
	} {
		code, body := f.do(t, c.method, c.target, c.body)
		if code != http.StatusServiceUnavailable || body["error"] == nil {
			t.Errorf("%s %s: %d %v, want 503", c.method, c.target, code, body)
		}
	}
	f.srv.Restart()
	if code, _ := f.do(t, "GET", "/api/token_counts", ""); code != 200 {
		t.Fatalf("after restart: %d", code)
	}
}

func TestNotConfigured(t *testing.T) {
	mux := http.NewServeMux()
	analytics.NewHandler(nil, analytics.AllKeys).Register(mux)
	rec := httptest.NewRecorder()
	mux.ServeHTTP(rec, httptest.NewRequest("GET", "/api/token_counts", nil))
	if rec.Code != http.StatusServiceUnavailable || !strings.Contains(rec.Body.String(), `"error"`) {
		t.Fatalf("%d %s", rec.Code, rec.Body)
	}
}

func TestParseTime(t *testing.T) {
	now := time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)
	for in, want := range map[string]time.Time{
		"24h":                  now.Add(-24 * time.Hour),
		"7d":                   now.Add(-7 * 24 * time.Hour),
		"2026-04-01T00:00:00Z": time.Date(2026, 4, 1, 0, 0, 0, 0, time.UTC),
		"2026-04-02":           time.Date(2026, 4, 2, 0, 0, 0, 0, time.UTC),
	} {
		got, err := analytics.ParseTime(in, now)
		if err != nil || !got.Equal(want) {
			t.Errorf("ParseTime(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, bad := range []string{"-1h", "soon", "1x"} {
		if _, err := analytics.ParseTime(bad, now); err == nil {
			t.Errorf("ParseTime(%q) accepted", bad)
		}
	}
}
