package ollamatest

import (
	"context"
	"net/http"
	"time"
)

// FaultHeader carries a Fault as JSON on any request, including GETs; the
// request body's "fake" field does the same for POST bodies.
const FaultHeader = "X-Fake-Ollama"

// Fault misbehaves for one request. It is read from the "fake" field of a
// request body (a field a router passes through untouched) or from the
// X-Fake-Ollama header. Fields apply in this order: Hang, LatencyMs, Status;
// then, on streaming routes, Chunks, DelayMs and the *AfterChunks cuts.
type Fault struct {
	// Status answers with this HTTP status and {"error": Error} (Error
	// defaults to the status text) before anything else is written.
	Status int    `json:"status,omitempty"`
	Error  string `json:"error,omitempty"`
	// Hang holds the request, writing nothing, until the client goes away
	// or the server closes.
	Hang bool `json:"hang,omitempty"`
	// LatencyMs waits before the first byte.
	LatencyMs int `json:"latency_ms,omitempty"`
	// DelayMs waits before each content chunk (overrides Config.ChunkDelay).
	DelayMs int `json:"delay_ms,omitempty"`
	// Chunks is the number of content chunks (overrides num_predict and Config.Chunks).
	Chunks *int `json:"chunks,omitempty"`
	// FailAfterChunks writes that many content chunks, then closes the TCP
	// connection abruptly (the client sees an unexpected EOF). 0 cuts right
	// after the response header.
	FailAfterChunks *int `json:"fail_after_chunks,omitempty"`
	// ErrorAfterChunks writes that many chunks, then an in-stream
	// {"error": Error} line and ends the response cleanly, as Ollama does when
	// a runner fails mid-generation. Non-streamed requests get a 500 instead.
	ErrorAfterChunks *int `json:"error_after_chunks,omitempty"`
	// HangAfterChunks writes that many chunks, then hangs like Hang.
	HangAfterChunks *int `json:"hang_after_chunks,omitempty"`
}

func (f *Fault) errorMessage(status int) string {
	if f != nil && f.Error != "" {
		return f.Error
	}
	if status == 0 {
		status = http.StatusInternalServerError
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
		s.hang(r, nil)
		return false
	}
	if f.LatencyMs > 0 && !s.sleep(r.Context(), time.Duration(f.LatencyMs)*time.Millisecond) {
		return false
	}
	if f.Status != 0 {
		writeError(w, f.Status, f.errorMessage(f.Status))
		return false
	}
	return true
}

// serverFailure answers generation requests while SetFailure is in force.
func (s *Server) serverFailure(w http.ResponseWriter) bool {
	if f := s.failure.Load(); f != nil {
		writeError(w, f.status, f.msg)
		return true
	}
	return false
}

// hang blocks until the client goes away, the server closes, or gate (when
// non-nil) is closed; it reports whether the request may go on.
func (s *Server) hang(r *http.Request, gate chan struct{}) bool {
	select {
	case <-r.Context().Done():
		return false
	case <-s.done:
		return false
	case <-gate:
		return true
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

// cut flushes what was written and closes the client connection without
// finishing the response.
func cut(w http.ResponseWriter) {
	http.NewResponseController(w).Flush() //nolint:errcheck // the connection goes anyway
	if !hangUp(w) {
		panic(http.ErrAbortHandler) // HTTP/2 or a wrapped writer: net/http resets the stream
	}
}

// hangUp closes the client connection at once, flushing nothing; false
// when the connection cannot be taken over.
func hangUp(w http.ResponseWriter) bool {
	conn, _, err := http.NewResponseController(w).Hijack()
	if err != nil {
		return false
	}
	conn.Close()
	return true
}

// SetFailure makes every generation request (chat, generate, embed,
// embeddings, /v1) answer status with {"error": msg}; status 0 clears it.
func (s *Server) SetFailure(status int, msg string) {
	if status == 0 {
		s.failure.Store(nil)
		return
	}
	if msg == "" {
		msg = http.StatusText(status)
	}
	s.failure.Store(&failure{status: status, msg: msg})
}

// SetHang makes every request (any route) hang before it is handled, until
// SetHang(false), the client leaving, or Close.
func (s *Server) SetHang(on bool) {
	if on {
		g := make(chan struct{})
		if s.hangGate.CompareAndSwap(nil, &g) {
			return
		}
		return
	}
	if g := s.hangGate.Swap(nil); g != nil {
		close(*g)
	}
}

// SetChunks sets the default reply length in content chunks.
func (s *Server) SetChunks(n int) { s.chunks.Store(int64(max(n, 0))) }

// SetChunkDelay sets the default pause before each content chunk.
func (s *Server) SetChunkDelay(d time.Duration) { s.chunkDelay.Store(int64(d)) }

// SetFirstByteLatency sets the pause before the first byte of a generation reply.
func (s *Server) SetFirstByteLatency(d time.Duration) { s.latency.Store(int64(d)) }
