package server

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/droverhq/drover/pkg/config"
	"github.com/droverhq/drover/services/proxy/internal/sse"
)

// A backend that sends one server-sent event larger than
// server.max_event_bytes (here 17 MiB without a blank line, then [DONE])
// gets its stream failed: the client has what came before, neither the
// giant event nor a [DONE] (or Ollama's done chunk) after it, then the
// error a cut stream ends with, and is not left waiting. On both paths that split events: /v1 passed through, and
// /api/chat translated from OpenAI's stream.
func TestOversizeSSEEventFailsTheStream(t *testing.T) {
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/v1/models":
			io.WriteString(w, `{"object":"list","data":[{"id":"big","object":"model","owned_by":"x"}]}`) //nolint:errcheck
			return
		case "/v1/chat/completions":
		default:
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Content-Type", "text/event-stream")
		io.WriteString(w, `data: {"id":"c","object":"chat.completion.chunk","model":"big","choices":[{"index":0,"delta":{"content":"first"}}]}`+"\n\n") //nolint:errcheck
		w.(http.Flusher).Flush()
		io.WriteString(w, `data: {"choices":[{"index":0,"delta":{"content":"`) //nolint:errcheck
		mib := bytes.Repeat([]byte("x"), 1<<20)
		for range 17 {
			if _, err := w.Write(mib); err != nil {
				return // the proxy gave up on the stream
			}
		}
		io.WriteString(w, `"}}]}`+"\n\ndata: [DONE]\n\n") //nolint:errcheck
	}))
	t.Cleanup(backend.Close)
	cfg, err := config.FromStruct(&config.Config{Replica: "test", Backends: []config.Backend{{Name: "v", URL: backend.URL, Type: "openai"}}})
	if err != nil {
		t.Fatal(err)
	}
	srv := New(cfg, slog.New(slog.NewTextHandler(io.Discard, nil)), Options{})
	hs := httptest.NewServer(srv.Handler())
	t.Cleanup(func() { hs.CloseClientConnections(); hs.Close(); srv.Close() })

	for _, c := range []struct{ path, body, first, end string }{
		{"/v1/chat/completions", `{"model":"big","stream":true,"messages":[{"role":"user","content":"hi"}]}`, `"content":"first"`, "[DONE]"},
		{"/api/chat", `{"model":"big","messages":[{"role":"user","content":"hi"}]}`, `"content":"first"`, `"done":true`},
	} {
		ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
		req, _ := http.NewRequestWithContext(ctx, http.MethodPost, hs.URL+c.path, strings.NewReader(c.body))
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			cancel()
			t.Fatal(err)
		}
		got, _ := io.ReadAll(resp.Body) // a cut stream may end in an error: what arrived is what counts
		resp.Body.Close()
		waited := ctx.Err()
		cancel()
		if waited != nil {
			t.Fatalf("%s: the client was left waiting", c.path)
		}
		if !strings.Contains(string(got), c.first) || strings.Contains(string(got), c.end) || len(got) > sse.DefaultMaxEvent {
			t.Fatalf("%s: client got %d bytes: %.300s", c.path, len(got), got)
		}
		// A backend failure, said in the stream as for any cut stream
		// (not a client that left).
		if !strings.Contains(string(got), `"error"`) {
			t.Fatalf("%s: no error at the end of the cut stream: %.300s", c.path, got)
		}
	}
}
