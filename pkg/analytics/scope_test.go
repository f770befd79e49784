package analytics_test

import (
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"

	"github.com/droverhq/drover/pkg/analytics"
)

var (
	clientA = map[string]string{"Test-Key": "team-a"}
	clientB = map[string]string{"Test-Key": "team-b"}
	admin   = map[string]string{"Test-Key": "root", "Test-All": "1"}
)

// totalsByKey sums total_tokens per api_key over a token_usage answer's
// rows (grouped by key).
func totalsByKey(t *testing.T, body map[string]any) map[string]float64 {
	t.Helper()
	got := map[string]float64{}
	rows, ok := body["rows"].([]any)
	if !ok {
		t.Fatalf("no rows in %v", body)
	}
	for _, r := range rows {
		m := r.(map[string]any)
		k, _ := m["api_key"].(string)
		got[k] += m["total_tokens"].(float64)
	}
	return got
}

// A client key reads only its own usage on every route, whatever it asks
// for; another key's is refused in Ollama's error shape. The fixture holds
// team-a (340 tokens over 7 days) and team-b (3).
func TestClientSeesOnlyItsOwnUsage(t *testing.T) {
	f := setup(t)

	// group_by=key: one row, its own, and the answer says who asked.
	code, body, _ := f.as(t, clientA, "GET", "/api/token_usage?group_by=key&since=7d", "")
	if code != 200 {
		t.Fatalf("%d %v", code, body)
	}
	if got := totalsByKey(t, body); len(got) != 1 || got["team-a"] != 340 {
		t.Fatalf("team-a grouped by key: %v, want only team-a 340", got)
	}
	caller := body["caller"].(map[string]any)
	if body["key_id"] != "team-a" || caller["key_id"] != "team-a" || caller["all_keys"] != false {
		t.Fatalf("scope not reported: key_id %v caller %v", body["key_id"], caller)
	}
	code, body, _ = f.as(t, clientB, "GET", "/api/token_usage?group_by=key&since=7d", "")
	if got := totalsByKey(t, body); code != 200 || len(got) != 1 || got["team-b"] != 3 {
		t.Fatalf("team-b grouped by key: %d %v, want only team-b 3", code, got)
	}

	// Grouped by something else, still only its own tokens.
	code, body, _ = f.as(t, clientA, "GET", "/api/token_usage?group_by=api&since=7d", "")
	if code != 200 {
		t.Fatalf("%d %v", code, body)
	}
	apis := map[string]float64{}
	for _, r := range body["rows"].([]any) {
		m := r.(map[string]any)
		apis[m["api"].(string)] = m["total_tokens"].(float64)
	}
	if len(apis) != 3 || apis["ollama"] != 30 || apis["openai"] != 300 || apis["responses"] != 10 {
		t.Fatalf("team-a by api: %v (team-b's anthropic must not show)", apis)
	}

	code, body, _ = f.as(t, clientA, "GET", "/api/token_counts", "")
	if code != 200 || body["total_tokens"].(float64) != 340 || body["key_id"] != "team-a" {
		t.Fatalf("token_counts as team-a: %d %v", code, body)
	}
	code, body, _ = f.as(t, clientB, "GET", "/api/token_counts", "")
	if code != 200 || body["total_tokens"].(float64) != 3 {
		t.Fatalf("token_counts as team-b: %d %v", code, body)
	}

	code, body, _ = f.as(t, clientA, "POST", "/api/stats", `{"model":"llama3.2:3b","since":"24h"}`)
	if code != 200 || body["total_tokens"].(float64) != 330 || body["key_id"] != "team-a" {
		t.Fatalf("stats as team-a: %d %v", code, body)
	}
	if dist := body["endpoint_distribution"].(map[string]any); len(dist) != 1 || dist["gpu-a"].(float64) != 330 {
		t.Fatalf("stats as team-a: endpoints %v (team-b's gpu-b must not show)", dist)
	}
	// team-b never used qwen: for it there is nothing to show.
	if code, body, _ = f.as(t, clientB, "POST", "/api/stats", `{"model":"qwen2.5:7b"}`); code != 404 {
		t.Fatalf("stats as team-b for team-a's model: %d %v", code, body)
	}
}

func TestClientRefusedOtherKeys(t *testing.T) {
	f := setup(t)
	cases := []struct {
		name, method, target, body string
		who                        map[string]string
		code                       int
	}{
		{"usage key_id", "GET", "/api/token_usage?key_id=team-b", "", clientA, 403},
		{"usage api_key alias", "GET", "/api/token_usage?api_key=team-b&group_by=key", "", clientA, 403},
		{"counts key_id", "GET", "/api/token_counts?key_id=team-b", "", clientA, 403},
		{"stats key_id", "POST", "/api/stats", `{"model":"llama3.2:3b","key_id":"team-b"}`, clientA, 403},
		{"own key_id", "GET", "/api/token_usage?key_id=team-a", "", clientA, 200},
		{"own key via alias", "GET", "/api/token_usage?api_key=team-a", "", clientA, 200},
		// A client whose key id is somehow empty must not read everyone's.
		{"no key id", "GET", "/api/token_usage", "", map[string]string{"Test-Empty-Key": "1"}, 403},
		{"no key id, counts", "GET", "/api/token_counts", "", map[string]string{"Test-Empty-Key": "1"}, 403},
		{"no key id, stats", "POST", "/api/stats", `{"model":"llama3.2:3b"}`, map[string]string{"Test-Empty-Key": "1"}, 403},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			code, body, _ := f.as(t, c.who, c.method, c.target, c.body)
			if code != c.code {
				t.Fatalf("%d %v, want %d", code, body, c.code)
			}
			if c.code == 403 {
				msg, _ := body["error"].(string)
				if msg == "" || len(body) != 1 || strings.Contains(msg, "team-b") {
					t.Fatalf("refusal %v: want Ollama's {\"error\": ...} naming no other key", body)
				}
			}
		})
	}
}

// An admin reads every key's usage, and may filter by any key id.
func TestAdminSeesAllKeys(t *testing.T) {
	f := setup(t)
	code, body, _ := f.as(t, admin, "GET", "/api/token_usage?group_by=key&since=7d", "")
	if got := totalsByKey(t, body); code != 200 || len(got) != 2 || got["team-a"] != 340 || got["team-b"] != 3 {
		t.Fatalf("admin grouped by key: %d %v", code, got)
	}
	if caller := body["caller"].(map[string]any); caller["key_id"] != "root" || caller["all_keys"] != true || body["key_id"] != nil {
		t.Fatalf("admin scope: caller %v key_id %v", caller, body["key_id"])
	}
	code, body, hdr := f.as(t, admin, "GET", "/api/token_usage?key_id=team-b&group_by=key", "")
	if got := totalsByKey(t, body); code != 200 || len(got) != 1 || got["team-b"] != 3 || hdr.Get("Deprecation") != "" {
		t.Fatalf("admin key_id=team-b: %d %v %v", code, got, hdr)
	}
	code, body, _ = f.as(t, admin, "GET", "/api/token_counts?key_id=team-b", "")
	if code != 200 || body["total_tokens"].(float64) != 3 {
		t.Fatalf("admin token_counts key_id=team-b: %d %v", code, body)
	}
	code, body, _ = f.as(t, admin, "POST", "/api/stats", `{"model":"llama3.2:3b","key_id":"team-b"}`)
	if code != 200 || body["total_tokens"].(float64) != 3 {
		t.Fatalf("admin stats key_id=team-b: %d %v", code, body)
	}
}

// api_key still filters, as the deprecated name of key_id, and says so; it
// never conflicts silently with key_id.
func TestDeprecatedAPIKeyFilter(t *testing.T) {
	f := setup(t)
	code, body, hdr := f.as(t, admin, "GET", "/api/token_usage?api_key=team-b&group_by=key", "")
	if got := totalsByKey(t, body); code != 200 || len(got) != 1 || got["team-b"] != 3 {
		t.Fatalf("api_key=team-b: %d %v", code, got)
	}
	if !strings.HasPrefix(hdr.Get("Deprecation"), "@") || !strings.Contains(hdr.Get("Warning"), "key_id") {
		t.Fatalf("api_key answered without deprecation headers: %v", hdr)
	}
	code, body, _ = f.as(t, admin, "GET", "/api/token_counts?api_key=team-b", "")
	if code != 200 || body["total_tokens"].(float64) != 3 {
		t.Fatalf("token_counts api_key=team-b: %d %v", code, body)
	}
	code, body, _ = f.as(t, admin, "GET", "/api/token_usage?api_key=team-b&key_id=team-a", "")
	if code != 400 || body["error"] == nil {
		t.Fatalf("api_key and key_id disagreeing: %d %v, want 400", code, body)
	}
	code, _, _ = f.as(t, admin, "GET", "/api/token_usage?api_key=team-b&key_id=team-b", "")
	if code != 200 {
		t.Fatalf("api_key and key_id agreeing: %d", code)
	}
}

// Key ids reach ClickHouse as bound parameters: SQL in one matches no key,
// breaks nothing and reads nothing it should not.
func TestHostileKeyID(t *testing.T) {
	f := setup(t)
	for _, id := range []string{
		`x' OR 1=1 --`,
		`team-a' OR '1'='1`,
		`x'; DROP TABLE token_usage_minute; --`,
		`\' OR 1=1 --`,
		"team-a\x00",
		`team-a" OR ""="`,
	} {
		for _, target := range []string{
			"/api/token_usage?group_by=key&since=7d&key_id=" + url.QueryEscape(id),
			"/api/token_usage?group_by=api&since=7d&api_key=" + url.QueryEscape(id),
		} {
			code, body, _ := f.as(t, admin, "GET", target, "")
			if code != 200 || len(body["rows"].([]any)) != 0 {
				t.Errorf("key_id %q: %d %v, want 200 and no rows", id, code, body)
			}
		}
		code, body, _ := f.as(t, admin, "GET", "/api/token_counts?key_id="+url.QueryEscape(id), "")
		if code != 200 || body["total_tokens"].(float64) != 0 || len(body["breakdown"].([]any)) != 0 {
			t.Errorf("token_counts key_id %q: %d %v, want 200 and nothing", id, code, body)
		}
		// As a client the same string is just another key's id.
		if code, body, _ := f.as(t, clientA, "GET", "/api/token_usage?key_id="+url.QueryEscape(id), ""); code != 403 {
			t.Errorf("client asking key_id %q: %d %v", id, code, body)
		}
	}
	// The tables are intact and still answer in full.
	if code, body := f.do(t, "GET", "/api/token_counts", ""); code != 200 || body["total_tokens"].(float64) != 343 {
		t.Fatalf("after hostile key ids: %d %v", code, body)
	}
}

// Without a scope nobody reads anything.
func TestNoScopeRefusesEveryone(t *testing.T) {
	mux := http.NewServeMux()
	analytics.NewHandler(nil, nil).Register(mux)
	for _, c := range []struct{ method, target, body string }{
		{"GET", "/api/token_counts", ""}, {"GET", "/api/token_usage", ""}, {"POST", "/api/stats", `{"model":"m"}`},
	} {
		rec := httptest.NewRecorder()
		mux.ServeHTTP(rec, httptest.NewRequest(c.method, c.target, strings.NewReader(c.body)))
		if rec.Code != http.StatusForbidden || !strings.Contains(rec.Body.String(), `"error"`) {
			t.Errorf("%s %s without a scope: %d %s", c.method, c.target, rec.Code, rec.Body)
		}
	}
}
