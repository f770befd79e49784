package server

import (
	"bufio"
	"context"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/droverhq/drover/pkg/config"
)

func get(t *testing.T, url string, header map[string]string) (*http.Response, string) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, url, nil)
	for k, v := range header {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, string(b)
}

// Browsers get the dashboard at /, everyone else Ollama's answer; the page
// and its assets need no key, the data behind them does.
func TestDashboardNegotiation(t *testing.T) {
	e := newEnv(t, 1, nil, func(c *config.Config) {
		c.Auth.Keys = []config.APIKey{{ID: "team-a", Key: "secret-a"}}
	})
	browser := "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8"
	cases := []struct {
		name, accept string
		html         bool
	}{
		{"browser", browser, true},
		{"curl", "*/*", false},
		{"no accept", "", false},
		{"json client", "application/json", false},
		{"html refused", "text/html;q=0, */*", false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			resp, body := get(t, e.url+"/", map[string]string{"Accept": c.accept})
			if resp.StatusCode != http.StatusOK {
				t.Fatalf("status %d", resp.StatusCode)
			}
			isHTML := strings.Contains(body, "<title>Drover</title>")
			if isHTML != c.html || (!c.html && body != "Ollama is running") {
				t.Fatalf("Accept %q got %q (html=%v)", c.accept, body[:min(len(body), 60)], isHTML)
			}
			if !strings.Contains(resp.Header.Get("Vary"), "Accept") {
				t.Fatalf("no Vary: Accept on /")
			}
		})
	}
	// The Ollama client's heartbeat (HEAD /) still works.
	if err := e.client.Heartbeat(context.Background()); err != nil {
		t.Fatalf("ollama heartbeat: %v", err)
	}
	for path, ctype := range map[string]string{"/dashboard/app.js": "javascript", "/dashboard/app.css": "text/css", "/dashboard/favicon.svg": "image/svg+xml"} {
		resp, body := get(t, e.url+path, nil)
		if resp.StatusCode != http.StatusOK || !strings.Contains(resp.Header.Get("Content-Type"), ctype) || len(body) < 100 {
			t.Fatalf("%s: %d %q (%d bytes)", path, resp.StatusCode, resp.Header.Get("Content-Type"), len(body))
		}
	}
	if resp, _ := get(t, e.url+"/dashboard/nope.js", nil); resp.StatusCode != http.StatusNotFound {
		t.Fatalf("missing asset: %d", resp.StatusCode)
	}
	// Data needs the key: as a header, or as ?api_key= for EventSource.
	if resp, _ := get(t, e.url+"/api/usage", nil); resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("/api/usage without a key: %d", resp.StatusCode)
	}
	if resp, body := get(t, e.url+"/api/usage", map[string]string{"Authorization": "Bearer secret-a"}); resp.StatusCode != http.StatusOK || !strings.Contains(body, `"usage_counts"`) {
		t.Fatalf("/api/usage with a key: %d %s", resp.StatusCode, body)
	}
	if resp, _ := get(t, e.url+"/api/usage-stream", nil); resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("/api/usage-stream without a key: %d", resp.StatusCode)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, e.url+"/api/usage-stream?api_key=secret-a", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "text/event-stream" {
		t.Fatalf("/api/usage-stream?api_key=: %d %s", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if strings.HasPrefix(sc.Text(), "data: {") {
			break
		}
	}
	if sc.Err() != nil {
		t.Fatalf("no snapshot on the stream: %v", sc.Err())
	}
	// Analytics are mounted and say why they cannot answer here.
	resp2, body := get(t, e.url+"/api/token_counts", map[string]string{"Authorization": "Bearer secret-a"})
	if resp2.StatusCode != http.StatusServiceUnavailable || !strings.Contains(body, "clickhouse") {
		t.Fatalf("/api/token_counts without ClickHouse: %d %s", resp2.StatusCode, body)
	}
}

// The page and its assets need no key and hold no secret: not when asked
// without a key, with a wrong one, with a valid one as a header, or with
// one handed over as /?api_key= (which the page takes out of the URL in
// the browser; the server never writes it back).
func TestDashboardHoldsNoSecrets(t *testing.T) {
	e := newEnv(t, 1, nil, func(c *config.Config) {
		c.Auth.Keys = []config.APIKey{{ID: "root", Key: "secret-root", Role: "admin"}, {ID: "team-a", Key: "secret-a"}}
	})
	browser := "text/html,application/xhtml+xml,*/*;q=0.8"
	for _, path := range []string{"/", "/?api_key=secret-a", "/?api_key=secret-root", "/dashboard/app.js", "/dashboard/app.css", "/dashboard/favicon.svg"} {
		for name, header := range map[string]map[string]string{
			"no key":    {"Accept": browser},
			"wrong key": {"Accept": browser, "Authorization": "Bearer secret-nope"},
			"client":    {"Accept": browser, "Authorization": "Bearer secret-a"},
			"admin":     {"Accept": browser, "Authorization": "Bearer secret-root"},
		} {
			resp, body := get(t, e.url+path, header)
			if resp.StatusCode != http.StatusOK || len(body) < 100 {
				t.Fatalf("%s %s: %d (%d bytes)", name, path, resp.StatusCode, len(body))
			}
			if strings.Contains(body, "secret-") {
				t.Fatalf("%s %s: the answer holds a key", name, path)
			}
			for k, vs := range resp.Header {
				if strings.Contains(strings.Join(vs, " "), "secret-") {
					t.Fatalf("%s %s: header %s holds a key", name, path, k)
				}
			}
			if resp.Header.Get("Referrer-Policy") != "no-referrer" || resp.Header.Get("Cache-Control") != "no-cache" {
				t.Fatalf("%s %s: Referrer-Policy %q, Cache-Control %q", name, path,
					resp.Header.Get("Referrer-Policy"), resp.Header.Get("Cache-Control"))
			}
		}
	}
	// The page keeps a key for its tab only and never in the URL it
	// leaves behind.
	_, js := get(t, e.url+"/dashboard/app.js", nil)
	for _, want := range []string{"sessionStorage", "history.replaceState", "Authorization"} {
		if !strings.Contains(js, want) {
			t.Fatalf("app.js does not use %s", want)
		}
	}
	if strings.Contains(js, "localStorage.setItem('drover.apiKey'") {
		t.Fatal("app.js keeps the key in localStorage")
	}
}

// The analytics routes behind the dashboard are scoped by the caller's
// key: a client key asking for another key's usage is refused before
// ClickHouse is asked (this proxy has none: 503 means the scope let it
// through), its own is not; an admin may ask for any key.
func TestAnalyticsScopedByKey(t *testing.T) {
	e := newEnv(t, 1, nil, func(c *config.Config) {
		c.Auth.Keys = []config.APIKey{{ID: "root", Key: "secret-root", Role: "admin"}, {ID: "team-a", Key: "secret-a"}}
	})
	cases := []struct {
		key, method, path, body string
		code                    int
	}{
		{"secret-a", "GET", "/api/token_usage?key_id=team-b", "", http.StatusForbidden},
		{"secret-a", "GET", "/api/token_usage?api_key=team-b", "", http.StatusForbidden},
		{"secret-a", "GET", "/api/token_counts?key_id=root", "", http.StatusForbidden},
		{"secret-a", "POST", "/api/stats", `{"model":"m","key_id":"team-b"}`, http.StatusForbidden},
		{"secret-a", "GET", "/api/token_usage?key_id=team-a&group_by=key", "", http.StatusServiceUnavailable},
		{"secret-a", "GET", "/api/token_usage?group_by=key", "", http.StatusServiceUnavailable},
		{"secret-root", "GET", "/api/token_usage?key_id=team-b", "", http.StatusServiceUnavailable},
		{"secret-root", "POST", "/api/stats", `{"model":"m","key_id":"team-b"}`, http.StatusServiceUnavailable},
		// api_key on these routes is the filter, never a credential.
		{"", "GET", "/api/token_usage?api_key=secret-root", "", http.StatusUnauthorized},
	}
	for _, c := range cases {
		req, _ := http.NewRequest(c.method, e.url+c.path, strings.NewReader(c.body))
		if c.key != "" {
			req.Header.Set("Authorization", "Bearer "+c.key)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != c.code || !strings.HasPrefix(string(b), `{"error":`) {
			t.Errorf("%s %s as %q: %d %s, want %d in Ollama's error shape", c.method, c.path, c.key, resp.StatusCode, b, c.code)
		}
	}
}
