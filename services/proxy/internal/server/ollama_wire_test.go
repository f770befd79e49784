package server

import (
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/droverhq/drover/services/proxy/internal/backend"
)

// Answers the real-Ollama conformance suite (services/proxy/conformance)
// found Drover giving differently from Ollama, pinned here over the fakes.
func TestOllamaWireDetails(t *testing.T) {
	e := newEnv(t, 2, nil, nil)
	cases := []struct {
		name, method, path, body string
		status                   int
		ctype, want              string
	}{
		{"unknown path", "GET", "/api/nope", "", 404, "text/plain", "404 page not found"},
		{"wrong method", "GET", "/api/chat", "", 405, "text/plain", "405 method not allowed"},
		{"delete by POST", "POST", "/api/delete", `{"model":"x"}`, 405, "text/plain", "405 method not allowed"},
		{"embed unknown model", "POST", "/api/embed", `{"model":"nope","input":"a"}`, 404, "application/json; charset=utf-8",
			`{"error":"model \"nope\" not found, try pulling it first"}`},
		{"embeddings unknown model", "POST", "/api/embeddings", `{"model":"nope","prompt":"a"}`, 404, "application/json; charset=utf-8",
			`{"error":"model \"nope\" not found, try pulling it first"}`},
		{"chat unknown model", "POST", "/api/chat", `{"model":"nope"}`, 404, "application/json; charset=utf-8", `{"error":"model 'nope' not found"}`},
		// Ollama itself answers 500 here; that is the answer, not a fault.
		{"embed without model", "POST", "/api/embed", `{"input":"a"}`, 500, "application/json; charset=utf-8",
			`{"error":"unqualified name: registry.ollama.ai/library/!MISSING!:latest"}`},
		// Every backend refuses alike: their answer, not a 500.
		{"copy bad destination", "POST", "/api/copy", `{"source":"tiny","destination":"bad name!"}`, 400, "application/json; charset=utf-8",
			`{"error":"destination \"bad name!\" is invalid"}`},
		{"create without stream", "POST", "/api/create", `{"model":"made","from":"tiny","stream":false}`, 200, "application/json", `{"status":"success"}` + "\n"},
		{"create refused", "POST", "/api/create", `{"model":"bad name!","from":"tiny","stream":false}`, 400, "application/json; charset=utf-8", `{"error":"invalid model name"}`},
		{"blob absent", "HEAD", "/api/blobs/sha256:" + strings.Repeat("0", 64), "", 404, "application/json; charset=utf-8", ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			req, _ := http.NewRequestWithContext(t.Context(), c.method, e.url+c.path, strings.NewReader(c.body))
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			body, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != c.status || resp.Header.Get("Content-Type") != c.ctype || string(body) != c.want {
				t.Fatalf("got %d %q %q, want %d %q %q", resp.StatusCode, resp.Header.Get("Content-Type"), body, c.status, c.ctype, c.want)
			}
		})
	}
	for _, b := range e.srv.Fleet.Backends {
		if s := b.Health.State(); s != backend.Closed {
			t.Errorf("backend %s is %v after answers that were the client's fault", b.Name, s)
		}
	}
}
