package server

import (
	"bytes"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/droverhq/drover/pkg/config"
)

// fuzzRoutes are the routes whose handlers decode a client's body.
var fuzzRoutes = []string{
	"POST /api/chat", "POST /api/generate", "POST /api/embed", "POST /api/embeddings", "POST /api/show",
	"POST /v1/chat/completions", "POST /v1/completions", "POST /v1/embeddings", "POST /v1/responses",
	"POST /v1/rerank", "POST /v1/messages", "POST /api/cache/invalidate", "POST /api/experimental/aliases",
}

// Whatever head and body a client sends to a route that decodes bodies, it
// gets an answer in that route's API's own error format, never a panic
// (middleware.Recoverer's bare 500). The replica has no backends, so every
// request ends at Drover's own checks.
func FuzzRequestHeadsAndBodies(f *testing.F) {
	cfg, err := config.FromStruct(&config.Config{Replica: "fuzz", Server: config.Server{MaxBodyBytes: 64 << 10}})
	if err != nil {
		f.Fatal(err)
	}
	srv := New(cfg, slog.New(slog.NewTextHandler(io.Discard, nil)), Options{})
	f.Cleanup(srv.Close)
	h := srv.Handler()
	for i, route := range fuzzRoutes {
		f.Add(uint8(i), []byte(modelBody(route, "tiny")), "application/json", "")
	}
	f.Add(uint8(0), []byte(`{"model":"tiny","messages":[{"role":"user","content":"hi","images":["x"]}],"stream":"yes"}`), "", "batch")
	f.Add(uint8(5), []byte(`{"model":"tiny","stream":true,"stream_options":{"include_usage":1}}`), "text/plain", "interactive")
	f.Add(uint8(10), []byte(`{"model":"tiny","max_tokens":0,"messages":[]}`), "application/json", "x")
	f.Add(uint8(4), []byte(`{"name":"tiny","model":5}`), "application/json", "")
	f.Add(uint8(11), []byte(`{"backends":["nope"]}`), "application/json", "")
	f.Add(uint8(1), []byte(``), "", "")
	f.Fuzz(func(t *testing.T, route uint8, body []byte, contentType, priority string) {
		r := fuzzRoutes[int(route)%len(fuzzRoutes)]
		method, path, _ := bytes.Cut([]byte(r), []byte(" "))
		req := httptest.NewRequest(string(method), string(path), bytes.NewReader(body))
		if isHeaderValue(contentType) {
			req.Header.Set("Content-Type", contentType)
		}
		if isHeaderValue(priority) {
			req.Header.Set("X-Drover-Priority", priority)
		}
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if rec.Code == http.StatusInternalServerError && rec.Body.Len() == 0 {
			t.Fatalf("%s %q: a panic", r, body)
		}
		if rec.Code >= 400 {
			checkShape(t, r, accessCall{rec.Code, rec.Body.Bytes(), rec.Header()})
		}
	})
}

// isHeaderValue is what net/http would let a client send as a value.
func isHeaderValue(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < ' ' && c != '\t' || c == 0x7f {
			return false
		}
	}
	return s != ""
}
