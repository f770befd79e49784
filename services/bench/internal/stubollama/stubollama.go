// Package stubollama is a tiny in-process stand-in for an Ollama server, for
// tests of the benchmark itself: it answers /api/chat (whole or NDJSON
// stream) and /v1/chat/completions (SSE), and can be told to fail every Nth
// request so tests can check that failures are counted.
package stubollama

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"sync/atomic"
	"time"
)

// Failure modes for failed requests.
const (
	// Fail500 answers HTTP 500 before any body.
	Fail500 = "500"
	// FailTruncate streams some chunks, then aborts the connection without
	// the final chunk. For non-streamed requests it behaves like Fail500.
	FailTruncate = "truncate"
)

// Server is an http.Handler. Configure its fields before serving.
type Server struct {
	// Chunks is the number of content chunks per streamed reply (default 20).
	Chunks int
	// FailEvery makes every FailEvery-th request (1-based) fail; 0 never.
	FailEvery int64
	// FailMode is Fail500 or FailTruncate (default Fail500).
	FailMode string

	served atomic.Int64 // requests received on the chat endpoints
	failed atomic.Int64 // of those, how many were made to fail
}

// Served is how many chat requests arrived.
func (s *Server) Served() int64 { return s.served.Load() }

// Failed is how many chat requests were made to fail.
func (s *Server) Failed() int64 { return s.failed.Load() }

type chatRequest struct {
	Model  string `json:"model"`
	Stream *bool  `json:"stream"`
}

func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	switch r.URL.Path {
	case "/api/version":
		io.WriteString(w, `{"version":"0.0.0-stub"}`)
		return
	case "/api/chat", "/v1/chat/completions":
	default:
		http.NotFound(w, r)
		return
	}
	var req chatRequest
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
		http.Error(w, `{"error":"bad request"}`, http.StatusBadRequest)
		return
	}
	n := s.served.Add(1)
	fail := s.FailEvery > 0 && n%s.FailEvery == 0
	if fail {
		s.failed.Add(1)
	}
	stream := req.Stream == nil || *req.Stream // Ollama streams by default
	if r.URL.Path == "/v1/chat/completions" {
		stream = req.Stream != nil && *req.Stream
	}
	if fail && (s.FailMode != FailTruncate || !stream) {
		http.Error(w, `{"error":"stub failure"}`, http.StatusInternalServerError)
		return
	}
	chunks := s.Chunks
	if chunks <= 0 {
		chunks = 20
	}
	now := time.Now().UTC().Format(time.RFC3339Nano)
	switch {
	case r.URL.Path == "/v1/chat/completions" && stream:
		w.Header().Set("Content-Type", "text/event-stream")
		for range chunks {
			fmt.Fprintf(w, "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"model\":%q,\"choices\":[{\"index\":0,\"delta\":{\"content\":\"x\"}}]}\n\n", req.Model)
			flush(w)
		}
		if fail {
			panic(http.ErrAbortHandler)
		}
		fmt.Fprintf(w, "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"model\":%q,\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\ndata: [DONE]\n\n", req.Model)
	case r.URL.Path == "/v1/chat/completions":
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, `{"id":"c1","object":"chat.completion","model":%q,"choices":[{"index":0,"message":{"role":"assistant","content":"x"},"finish_reason":"stop"}]}`, req.Model)
	case stream:
		w.Header().Set("Content-Type", "application/x-ndjson")
		for range chunks {
			fmt.Fprintf(w, "{\"model\":%q,\"created_at\":%q,\"message\":{\"role\":\"assistant\",\"content\":\"x\"},\"done\":false}\n", req.Model, now)
			flush(w)
		}
		if fail {
			panic(http.ErrAbortHandler)
		}
		fmt.Fprintf(w, "{\"model\":%q,\"created_at\":%q,\"message\":{\"role\":\"assistant\",\"content\":\"\"},\"done\":true,\"done_reason\":\"stop\",\"prompt_eval_count\":3,\"eval_count\":%d}\n", req.Model, now, chunks)
	default:
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, "{\"model\":%q,\"created_at\":%q,\"message\":{\"role\":\"assistant\",\"content\":\"x\"},\"done\":true,\"done_reason\":\"stop\",\"prompt_eval_count\":3,\"eval_count\":%d}", req.Model, now, chunks)
	}
}

func flush(w http.ResponseWriter) {
	if f, ok := w.(http.Flusher); ok {
		f.Flush()
	}
}
