// Package forward sends one client request to one backend chosen by the
// router, failing over to the next candidate while nothing has reached the
// client, and streams the answer back as it arrives while a Meter watches
// the bytes for token counts.
//
// What is copied: the request body as read (Drover never re-encodes a
// request unless Prepare rewrites it), the client's end-to-end headers except
// credentials and Accept-Encoding (bodies must stay readable for metering),
// and the backend's response status, headers and body. Streaming responses
// are flushed after every read.
package forward

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/droverhq/drover/pkg/usage"
	"github.com/droverhq/drover/services/proxy/internal/backend"
	"github.com/droverhq/drover/services/proxy/internal/fleet"
	"github.com/droverhq/drover/services/proxy/internal/routing"
)

// Request is what an API handler asks the forwarder to do.
type Request struct {
	Route  string // client-facing route, for usage and metrics
	Method string
	Path   string // backend path
	Body   []byte
	Model  string // as the client named it
	Stream bool
	APIKey string // client key id
	Kinds  []backend.Type
	// Prepare, if set, gives the path and body for a chosen backend and
	// model name there (aliases, translation). Without it Path and Body go
	// as they are, unless the backend's model name differs, in which case
	// the body's "model" field is rewritten.
	Prepare func(b *backend.Backend, model string) (path string, body []byte, err error)
	// Tokens reads the counts from the end of a finished 2xx response as
	// the backend b sent it; nil results mean the backend did not report
	// them.
	Tokens func(b *backend.Backend, m *Meter) (in, out *int64)
	// Transform, if set, is called once backend b has answered (any status
	// it is not failed over for, and the last failure when every attempt
	// failed), before anything reaches the client. It may edit h, the
	// backend's response headers, which are then copied to the client, and
	// returns the filter the body goes through on its way to client, or nil
	// to pass it through untouched. The Meter sees the backend's bytes, not
	// the filter's. Close is called only when the backend's body ended
	// cleanly; a Write error means the client is gone. Content-Length is
	// dropped whenever a filter is used.
	Transform func(b *backend.Backend, status int, h http.Header, client io.Writer) io.WriteCloser
	// Complete, if set, reports whether the backend bytes seen so far are
	// a whole answer, so that a client hanging up right after it (as
	// OpenAI's SDKs do at data: [DONE]) is not recorded as an error.
	Complete func(m *Meter) bool
	// Error writes an error in the API's own format.
	Error func(w http.ResponseWriter, status int, msg string)
}

// Forwarder is shared by all requests.
type Forwarder struct {
	Fleet       *fleet.Fleet
	Router      *routing.Router
	Sink        usage.Sink
	Replica     string
	MaxAttempts int
	// CancelGrace holds a slot this long after its client cancelled.
	CancelGrace time.Duration
	Log         *slog.Logger
	Observe     func(o Outcome) // metrics hook, optional
}

// Outcome describes one finished request for metrics.
type Outcome struct {
	Route, Backend, Model string
	Status                int
	TTFB, Duration        time.Duration
	Attempts              int
	// InputTokens, OutputTokens and TokensKnown are what the backend
	// reported, for successful responses.
	InputTokens, OutputTokens int64
	TokensKnown               bool
}

var bufPool = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}

// Serve runs req to completion and writes the response to w.
func (f *Forwarder) Serve(w http.ResponseWriter, r *http.Request, req *Request) {
	start := time.Now()
	ctx := r.Context()
	ev := usage.Event{Schema: usage.SchemaVersion, Replica: f.Replica, Model: req.Model, APIKey: req.APIKey, Route: req.Route, Stream: req.Stream}
	tried := map[string]bool{}
	var last *failure
	for attempt := 1; attempt <= f.MaxAttempts; attempt++ {
		ev.Attempts = attempt
		cands, err := f.Fleet.Candidates(ctx, req.Model, req.Kinds, tried)
		if err != nil {
			if last != nil {
				break
			}
			switch {
			case errors.Is(err, fleet.ErrModelNotFound):
				req.Error(w, http.StatusNotFound, fmt.Sprintf("model '%s' not found", req.Model))
			default:
				w.Header().Set("Retry-After", "1")
				req.Error(w, http.StatusServiceUnavailable, err.Error())
			}
			return
		}
		slot, err := f.Router.Acquire(ctx, cands)
		if err != nil {
			if ctx.Err() != nil {
				return // the client left while queued
			}
			w.Header().Set("Retry-After", retryAfter(err))
			req.Error(w, http.StatusServiceUnavailable, err.Error())
			return
		}
		done, fail := f.attempt(w, r, req, slot, &ev, start)
		if done {
			return
		}
		tried[slot.Backend] = true
		last = fail
		f.Log.Warn("backend attempt failed, trying next", "backend", slot.Backend, "model", req.Model, "route", req.Route, "attempt", attempt, "err", fail.msg)
	}
	// Every attempt failed before a byte reached the client.
	if last.status == 0 {
		req.Error(w, http.StatusBadGateway, last.msg)
	} else {
		var filter io.WriteCloser
		if req.Transform != nil {
			filter = req.Transform(last.backend, last.status, last.header, w)
		}
		if filter != nil {
			last.header.Del("Content-Length")
		}
		copyHeaders(w.Header(), last.header)
		w.WriteHeader(last.status)
		if filter == nil {
			w.Write(last.body) //nolint:errcheck // the client may be gone
		} else if _, err := filter.Write(last.body); err == nil {
			filter.Close() //nolint:errcheck // the client may be gone
		}
	}
	ev.Status = last.status
	if ev.Status == 0 {
		ev.Status = http.StatusBadGateway
	}
	f.finish(&ev, start, time.Time{}, true)
}

// failure is an attempt that can be retried elsewhere.
type failure struct {
	backend *backend.Backend
	status  int // 0: no response at all
	header  http.Header
	body    []byte
	msg     string
}

// attempt runs the request on the slot's backend. It returns done when the
// request is over (answered, or the client left); otherwise the failure to
// retry. The slot is released on every path.
func (f *Forwarder) attempt(w http.ResponseWriter, r *http.Request, req *Request, slot *routing.Slot, ev *usage.Event, start time.Time) (done bool, fail *failure) {
	ctx := r.Context()
	defer func() {
		// A backend notices a client's cancel only when it sees the
		// connection close; hold the slot a moment so the next request
		// does not land while the cancelled one is still running there.
		if ctx.Err() != nil && f.CancelGrace > 0 {
			time.AfterFunc(f.CancelGrace, slot.Release)
			return
		}
		slot.Release()
	}()
	b, _ := f.Fleet.Backend(slot.Backend)
	ev.Endpoint, ev.BackendModel = b.Name, ""
	if fleet.Normalize(slot.Model) != fleet.Normalize(req.Model) {
		ev.BackendModel = slot.Model
	}
	path, body, err := f.prepare(req, b, slot.Model)
	if err != nil {
		req.Error(w, http.StatusBadRequest, err.Error())
		return true, nil
	}
	breq, err := b.NewRequest(ctx, req.Method, path, bytes.NewReader(body))
	if err != nil {
		return false, &failure{msg: err.Error()}
	}
	breq.ContentLength = int64(len(body))
	copyRequestHeaders(breq.Header, r.Header)
	resp, err := b.Client.Do(breq)
	if err != nil {
		if ctx.Err() != nil {
			b.Health.EndTrial()
			ev.Status, ev.Error = 499, true
			f.finish(ev, start, time.Time{}, true)
			return true, nil
		}
		b.Health.Failure(err, fleet.IsConnectError(err))
		return false, &failure{msg: fmt.Sprintf("backend %s: %v", b.Name, err)}
	}
	defer resp.Body.Close()
	if resp.StatusCode >= 500 {
		// 5xx and Ollama's 503 "server busy" go to the next candidate;
		// the body is kept in case every candidate fails the same way.
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
		err := fmt.Errorf("backend %s: status %d: %s", b.Name, resp.StatusCode, bytes.TrimSpace(msg))
		b.Health.Failure(err, false)
		return false, &failure{backend: b, status: resp.StatusCode, header: resp.Header.Clone(), body: msg, msg: err.Error()}
	}
	b.Health.Success()
	if !slot.Loaded && resp.StatusCode < 300 {
		// The backend has just loaded the model to answer.
		f.Fleet.NoteLoaded(b.Name, slot.Model)
	}
	ev.Status = resp.StatusCode

	stream := req.Stream || isStreamType(resp.Header.Get("Content-Type"))
	var filter io.WriteCloser
	if req.Transform != nil {
		filter = req.Transform(b, resp.StatusCode, resp.Header, w)
	}
	if filter != nil {
		resp.Header.Del("Content-Length")
	}
	copyHeaders(w.Header(), resp.Header)
	w.WriteHeader(resp.StatusCode)
	var tokens func(*Meter) (in, out *int64)
	if req.Tokens != nil {
		tokens = func(m *Meter) (in, out *int64) { return req.Tokens(b, m) }
	}
	ttfb, clientGone, complete, copyErr := f.copy(w, filter, resp.Body, stream, tokens, req.Complete, ev)
	switch {
	case (clientGone || (copyErr != nil && ctx.Err() != nil)) && complete:
		// The client left once it had the whole answer (OpenAI's clients
		// hang up at data: [DONE]); nothing was cut short.
	case clientGone || (copyErr != nil && ctx.Err() != nil):
		ev.Error = true // the client left; not the backend's fault
	case copyErr != nil:
		ev.Error = true
		err := fmt.Errorf("backend %s: stream broken: %w", b.Name, copyErr)
		b.Health.Failure(err, false)
		f.Log.Warn("stream failed mid-way", "backend", b.Name, "model", req.Model, "route", req.Route, "err", copyErr)
	}
	f.finish(ev, start, ttfb, ev.Error || resp.StatusCode >= 400)
	return true, nil
}

// meterHolder lets Meters (and their buffers) be reused across requests.
type meterHolder struct{ m Meter }

var meterPool = sync.Pool{New: func() any { return &meterHolder{} }}

// copy streams body to w (through filter, when set), flushing each read
// when streaming, and fills the event's token counts. It returns when the
// first byte was written, and whether done judged the bytes seen complete.
func (f *Forwarder) copy(w http.ResponseWriter, filter io.WriteCloser, body io.Reader, stream bool, tokens func(*Meter) (in, out *int64), done func(*Meter) bool, ev *usage.Event) (ttfb time.Time, clientGone, complete bool, readErr error) {
	bp := bufPool.Get().(*[]byte)
	defer bufPool.Put(bp)
	mh := meterPool.Get().(*meterHolder)
	defer func() { mh.m.Reset(); meterPool.Put(mh) }()
	buf := *bp
	flusher, _ := w.(http.Flusher)
	defer func() {
		// Counts seen before the client left or the stream broke are still
		// what the backend reported.
		if ev.Status < 300 && tokens != nil {
			ev.InputTokens, ev.OutputTokens = tokens(&mh.m)
		}
		complete = done != nil && done(&mh.m)
	}()
	for {
		n, err := body.Read(buf)
		if n > 0 {
			if ttfb.IsZero() {
				ttfb = time.Now()
			}
			mh.m.Write(buf[:n]) //nolint:errcheck // never fails
			var werr error
			if filter == nil {
				_, werr = w.Write(buf[:n])
			} else {
				_, werr = filter.Write(buf[:n])
			}
			if werr != nil {
				return ttfb, true, false, nil
			}
			if stream && flusher != nil {
				flusher.Flush()
			}
		}
		if err == io.EOF {
			if filter != nil {
				if filter.Close() != nil {
					return ttfb, true, false, nil
				}
				if stream && flusher != nil {
					flusher.Flush()
				}
			}
			return ttfb, false, false, nil
		}
		if err != nil {
			return ttfb, false, false, err
		}
	}
}

func (f *Forwarder) prepare(req *Request, b *backend.Backend, model string) (string, []byte, error) {
	if req.Prepare != nil {
		return req.Prepare(b, model)
	}
	if fleet.Normalize(model) == fleet.Normalize(req.Model) {
		return req.Path, req.Body, nil
	}
	body, err := SetModel(req.Body, model)
	return req.Path, body, err
}

// finish stamps the event once, at the end, and hands it on.
func (f *Forwarder) finish(ev *usage.Event, start, ttfb time.Time, failed bool) {
	end := time.Now()
	ev.ID = usage.NewID()
	ev.Time = end.UTC()
	ev.Error = ev.Error || failed
	ev.DurationMs = float64(end.Sub(start).Microseconds()) / 1000
	if !ttfb.IsZero() {
		ev.TTFBMs = float64(ttfb.Sub(start).Microseconds()) / 1000
	}
	if f.Sink != nil {
		f.Sink.Record(*ev)
	}
	if f.Observe != nil {
		o := Outcome{Route: ev.Route, Backend: ev.Endpoint, Model: ev.Model, Status: ev.Status, Duration: end.Sub(start), Attempts: ev.Attempts}
		o.InputTokens, o.OutputTokens, o.TokensKnown = ev.Tokens()
		if !ttfb.IsZero() {
			o.TTFB = ttfb.Sub(start)
		}
		f.Observe(o)
	}
}

func retryAfter(err error) string {
	if errors.Is(err, routing.ErrQueueTimeout) {
		return "5"
	}
	return "1"
}

func isStreamType(ct string) bool {
	return strings.HasPrefix(ct, "application/x-ndjson") || strings.HasPrefix(ct, "text/event-stream")
}
