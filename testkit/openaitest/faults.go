package openaitest

import (
	"context"
	"net/http"
	"time"
)

// FaultHeader carries a Fault as JSON on any request.
const FaultHeader = "X-Fake-OpenAI"

// Fault misbehaves for one request. It is read from the "fake" field of a
// request body (a field a router passes through untouched) or from the
// X-Fake-OpenAI header. Fields apply in this order: Hang, LatencyMs, Status;
// then, on streaming replies, Chunks, DelayMs and the *AfterChunks cuts.
type Fault struct {
	// Status answers with this HTTP status and an error object carrying
	// Error (default: the status text) before anything else is written.
	Status int    `json:"status,omitempty"`
	Error  string `json:"error,omitempty"`
	// Hang holds the request, writing nothing, until the client goes away
	// or the server closes.
	Hang bool `json:"hang,omitempty"`
	// LatencyMs waits before the first byte.
	LatencyMs int `json:"latency_ms,omitempty"`
	// DelayMs waits before each content chunk (overrides Config.ChunkDelay).
	DelayMs int `json:"delay_ms,omitempty"`
	// Chunks is the number of content tokens (overrides max_tokens and Config.Chunks).
	Chunks *int `json:"chunks,omitempty"`
	// FailAfterChunks writes that many content chunks, then closes the
	// connection abruptly. 0 cuts right after the response header.
	FailAfterChunks *int `json:"fail_after_chunks,omitempty"`
	// ErrorAfterChunks writes that many chunks, then an in-stream
	// data: {"error": ...} event and data: [DONE], as vLLM does when the
	// engine fails mid-generation. Non-streamed requests get a 500.
	ErrorAfterChunks *int `json:"error_after_chunks,omitempty"`
	// HangAfterChunks writes that many chunks, then hangs like Hang.
	HangAfterChunks *int `json:"hang_after_chunks,omitempty"`
	// NoUsage reports neither usage nor timings for this request.
	NoUsage bool `json:"no_usage,omitempty"`
}

func (f *Fault) message(status int) string {
	if f != nil && f.Error != "" {
		return f.Error
	}
	return http.StatusText(status)
}

// applyFault runs the fault's up-front parts; false means the request was
// answered (or the client left) and the handler must stop.
func (s *Server) applyFault(w http.ResponseWriter, r *http.Request, f *Fault) bool {
	if f == nil {
		return true
	}
	if f.Hang {
		s.hang(r.Context())
		return false
	}
	if f.LatencyMs > 0 && !s.sleep(r.Context(), time.Duration(f.LatencyMs)*time.Millisecond) {
		return false
	}
	if f.Status != 0 {
		writeError(w, f.Status, f.message(f.Status), "")
		return false
	}
	return true
}

func (s *Server) hang(ctx context.Context) {
	select {
	case <-ctx.Done():
	case <-s.done:
	}
}

// sleep waits d; false means the client left or the server closed.
func (s *Server) sleep(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	case <-s.done:
		return false
	}
}

// cut closes the client connection without finishing the response.
func cut(w http.ResponseWriter) {
	rc := http.NewResponseController(w)
	rc.Flush() //nolint:errcheck // closing anyway
	if conn, _, err := rc.Hijack(); err == nil {
		conn.Close()
		return
	}
	panic(http.ErrAbortHandler)
}
