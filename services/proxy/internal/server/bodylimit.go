package server

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/droverhq/drover/pkg/config"
)

// bodyLimits bounds what a request body may cost: its size (413) and the
// time to receive it (408), both answered in the route's API format by
// deny. It must wrap the server's own ResponseWriter (be the outermost
// middleware) so that it can set the connection's read deadline.
//
// A Content-Length over the limit is refused before a byte of the body is
// read, and the connection closed; a chunked body is cut at the limit by
// http.MaxBytesReader, so no handler ever holds more than the limit. The
// limit is server.max_body_bytes, or server.max_blob_bytes for blob uploads,
// which the handler streams to the backends.
//
// The time bound is a read deadline on the connection: the whole body
// within server.body_timeout of the head's end; for a blob upload, which
// may rightly take hours, no more than server.body_timeout without a byte.
// Once the body is read to its end the deadline is lifted, so that a long
// answer is not cut (net/http watches the connection after the body to
// notice a client leaving, and a passed deadline would read as one).
//
// refused counts each refusal by reason: "body_too_large" or "body_timeout".
func bodyLimits(cfg config.Server, deny func(http.ResponseWriter, *http.Request, int, string), refused func(reason string)) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.Body == nil || r.Body == http.NoBody {
				next.ServeHTTP(w, r)
				return
			}
			limit, rolling := cfg.MaxBodyBytes, false
			if r.Method == http.MethodPost && strings.HasPrefix(r.URL.Path, "/api/blobs/") {
				limit, rolling = cfg.MaxBlobBytes, true
			}
			if r.ContentLength > limit {
				refused(reasonTooLarge)
				w.Header().Set("Connection", "close")
				deny(w, r, http.StatusRequestEntityTooLarge, tooLarge(limit))
				return
			}
			rc := http.NewResponseController(w)
			// Without a connection to set it on (a recorder in tests) there
			// is no deadline; the size bound holds regardless.
			timed := rc.SetReadDeadline(time.Now().Add(cfg.BodyTimeout)) == nil
			r.Body = &limitedBody{
				body: http.MaxBytesReader(w, r.Body, limit), w: w, rc: rc, refused: refused,
				timed: timed, rolling: rolling, timeout: cfg.BodyTimeout, limit: limit,
			}
			next.ServeHTTP(w, r)
		})
	}
}

const (
	reasonTooLarge = "body_too_large"
	reasonTimeout  = "body_timeout"
)

// bodyRefusals is drover_client_refusals_total: requests refused for what their
// client sent, by reason, so that a flood of them shows on /metrics.
func bodyRefusals(reg prometheus.Registerer) func(reason string) {
	c := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "drover_client_refusals_total",
		Help: "Requests refused for their body: body_too_large (413) or body_timeout (408).",
	}, []string{"reason"})
	reg.MustRegister(c)
	for _, r := range []string{reasonTooLarge, reasonTimeout} {
		c.WithLabelValues(r) // present at zero
	}
	return func(reason string) { c.WithLabelValues(reason).Inc() }
}

func tooLarge(limit int64) string {
	return fmt.Sprintf("request body too large: the limit is %d bytes", limit)
}

// bodyTimeoutError is what reading a request body returns once
// server.body_timeout passed; it wraps os.ErrDeadlineExceeded, which
// forward.ReadBody answers with 408.
type bodyTimeoutError struct{ After time.Duration }

func (e *bodyTimeoutError) Error() string {
	return fmt.Sprintf("request body not received within %s", e.After)
}

func (e *bodyTimeoutError) Unwrap() error { return os.ErrDeadlineExceeded }

// limitedBody is a request body under bodyLimits. The handler's goroutine
// alone reads it.
type limitedBody struct {
	body    io.ReadCloser // http.MaxBytesReader over the request's
	w       http.ResponseWriter
	rc      *http.ResponseController
	refused func(reason string)
	timed   bool // a deadline is set on the connection
	rolling bool // each read moves the deadline (blob uploads)
	timeout time.Duration
	limit   int64
}

func (b *limitedBody) Read(p []byte) (int, error) {
	n, err := b.body.Read(p)
	switch {
	case err == nil:
		if b.timed && b.rolling && n > 0 {
			b.rc.SetReadDeadline(time.Now().Add(b.timeout)) //nolint:errcheck // it was settable above
		}
	case err == io.EOF:
		if b.timed {
			b.timed = false
			b.rc.SetReadDeadline(time.Time{}) //nolint:errcheck // as above
		}
	case errors.Is(err, os.ErrDeadlineExceeded):
		// The connection is of no further use: the rest of the body is
		// not coming in time.
		b.w.Header().Set("Connection", "close")
		b.refused(reasonTimeout)
		return n, &bodyTimeoutError{After: b.timeout}
	default:
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			b.w.Header().Set("Connection", "close")
			b.refused(reasonTooLarge)
		}
	}
	return n, err
}

func (b *limitedBody) Close() error { return b.body.Close() }

// HTTPServer returns the http.Server for Handler with the connection limits
// of the server section: a request head within server.read_header_timeout
// and server.max_header_bytes (over it, net/http itself answers 431 in
// plain text: no route is known yet to choose an API's format), idle
// keep-alive connections closed after server.idle_timeout. There is no
// ReadTimeout or WriteTimeout: a generation may stream for many minutes;
// bodies are bounded by bodyLimits instead.
func (s *Server) HTTPServer() *http.Server {
	c := s.Config.Server
	return &http.Server{
		Handler:           s.handler,
		ReadHeaderTimeout: c.ReadHeaderTimeout,
		IdleTimeout:       c.IdleTimeout,
		MaxHeaderBytes:    c.MaxHeaderBytes,
	}
}

// Limit is the body's size bound, for readers that size their buffers by it
// (forward.ReadBody).
func (b *limitedBody) Limit() int64 { return b.limit }
