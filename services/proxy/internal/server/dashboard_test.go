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
