// Package forward sends one client request to one backend chosen by the
// router, failing over to the next candidate while nothing has reached the
// client, and streams the answer back as it arrives while a Meter watches
// the bytes for token counts.
//
// What is copied: the request body as the backend's dialect prepared it
// (as read, unless an alias renames the model or the dialect translates
// it), the client's end-to-end headers except
// credentials and Accept-Encoding (bodies must stay readable for metering),
// and the backend's response status, headers and body. Streaming responses
// are flushed after every read.
package forward

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/droverhq/drover/pkg/usage"
	"github.com/droverhq/drover/services/proxy/internal/affinity"
	"github.com/droverhq/drover/services/proxy/internal/auth"
	"github.com/droverhq/drover/services/proxy/internal/dialect"
	"github.com/droverhq/drover/services/proxy/internal/fleet"
	"github.com/droverhq/drover/services/proxy/internal/limits"
	"github.com/droverhq/drover/services/proxy/internal/routing"
)

// Request is what an API handler asks the forwarder to do. It says nothing
// about kinds of backend: each attempt asks the chosen backend's dialect
// how to send it and how to read the answer.
type Request struct {
	// Route is the client-facing route: it is recorded with usage and
	// metrics, and only backends whose dialect serves it are candidates.
	Route string
	// Need, if set, is one more thing candidates' dialects must serve
	// (dialect.Load for a request that only loads a model).
	Need   string
	Method string
	Body   []byte
	Model  string // as the client named it
	Stream bool
	// IncludeUsage: the client asked for the stream's usage itself
	// (dialect.Call).
	IncludeUsage bool
	APIKey       string // client key id
	// Error writes an error in the API's own format.
	Error func(w http.ResponseWriter, status int, msg string)

	// ticket is the request's reservation under its key's limits (nil:
	// no ledger); settled in finish, or released when Serve returns.
	ticket *limits.Ticket
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
	// Limits admits each request against its key's limits before routing
	// and settles it when it ends; nil: no limits.
	Limits *limits.Ledger
	// FirstByteTimeout bounds one attempt's wait for its backend: for a
	// streamed request, the response headers (Ollama sends them with the
	// first chunk, after evaluating the prompt; on a backend where the
	// model is not known to be loaded the bound is at least coldLoad, as
	// the load comes first); for a non-streamed one, only the connection
	// and the request being written, since a non-streamed generation
	// answers when it is done. Past it the attempt fails over and counts
	// against the breaker. 0: no bound (header_timeout still applies).
	FirstByteTimeout time.Duration
	// WriteTimeout bounds writing one chunk to the client: a client that
	// stops reading for that long loses the request, the backend request
	// is cancelled and its slot released. 0: no bound.
	WriteTimeout time.Duration
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

// StatusClientClosed is recorded for a request whose client went away
// before the backend answered (nginx's 499; never sent, as no one is
// listening).
const StatusClientClosed = 499

// maxErrorBody bounds the part of a failed backend answer kept to relay if
// every attempt fails.
const maxErrorBody = 64 << 10

// copyBufSize is the size of one read from a backend's body.
const copyBufSize = 32 << 10

var bufPool = sync.Pool{New: func() any { b := make([]byte, copyBufSize); return &b }}

// Serve runs req to completion and writes the response to w.
func (f *Forwarder) Serve(w http.ResponseWriter, r *http.Request, req *Request) {
	start := time.Now()
	ctx := r.Context()
	ev := usage.Event{Schema: usage.SchemaVersion, Replica: f.Replica, Model: req.Model, APIKey: req.APIKey, Route: req.Route, API: usage.APIOf(req.Route), Stream: req.Stream}
	if !auth.AllowsModel(ctx, req.Model) {
		// Outside the key's model list: answered as a model that does not
		// exist, so a key cannot learn what else the fleet serves.
		req.Error(w, http.StatusNotFound, fmt.Sprintf("model '%s' not found", req.Model))
		return
	}
	if f.Limits != nil {
		t, refused := f.Limits.Admit(ctx, auth.FromContext(ctx), req.Model, req.Route, req.Body)
		if refused != nil {
			f.refuse(w, req, refused, &ev, start)
			return
		}
		// Every path settles exactly once: finish with the usage event,
		// or this (no event: answered before a backend, or a panic).
		defer t.Release()
		req.ticket = t
		for k, v := range t.Header() {
			w.Header().Set(k, v)
		}
	}
	tried := map[string]bool{}
	// What the routing strategy reads of the prompt (docs/routing.md), read
	// once, for the first attempt with more than one candidate: a lone
	// candidate is granted whatever the prompt, so hashing it (14 µs for a
	// 10 KB chat) and keeping the index and slot model for it is work for
	// nothing: 4 % of the proxy's CPU in drover-bench's open loop on one
	// backend. What the index then does not learn is where that prompt is
	// cached, which counts only once another backend serves the model; the
	// conversation's next prompt, ranked then, records it.
	var prompt *affinity.Prompt
	parsed := false
	var last *failure
	for attempt := 1; attempt <= f.MaxAttempts; attempt++ {
		ev.Attempts = attempt
		cands, err := f.Fleet.Candidates(ctx, req.Model, tried, req.Route, req.Need)
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
		// The queue serves by class, then by key weight (docs/limits.md, the queue);
		// X-Drover-Priority may lower the key's class, never raise it.
		p := auth.FromContext(ctx)
		who, err := routing.TenantFor(p.ID, p.Weight, p.Class, r.Header.Get(routing.PriorityHeader))
		if err != nil {
			req.Error(w, http.StatusBadRequest, err.Error())
			return
		}
		var ranked *affinity.Prompt
		if len(cands) > 1 {
			if !parsed {
				prompt, parsed = f.Router.Prompt(req.Route, req.Body, r.Header), true
			}
			ranked = prompt
		}
		slot, err := f.Router.AcquireFor(ctx, who, cands, ranked)
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
	// Every attempt failed before a byte reached the client. The event is
	// recorded before the answer goes out, as for every answer.
	if last.status == 0 {
		ev.Status = http.StatusBadGateway
		f.finish(req, &ev, start, time.Time{}, true)
		req.Error(w, http.StatusBadGateway, last.msg)
		return
	}
	ev.Status = last.status
	f.finish(req, &ev, start, time.Time{}, true)
	req.keepLimitHeaders(last.header)
	// The body kept is at most maxErrorBody of what the backend sent: its
	// Content-Length no longer describes it.
	last.header.Del("Content-Length")
	out := f.newOutput(w)
	defer out.clearDeadline()
	filter := writeHead(out, last.transform, last.status, last.header)
	if filter == nil {
		out.Write(last.body) //nolint:errcheck // the client may be gone
	} else if _, err := filter.Write(last.body); err == nil {
		filter.Close() //nolint:errcheck // the client may be gone
	}
	out.commit()
}

// failure is an attempt that can be retried elsewhere.
type failure struct {
	transform func(status int, h http.Header, client io.Writer) io.WriteCloser // the attempt's dialect.Exchange.Transform
	status    int                                                              // 0: no response at all
	header    http.Header
	body      []byte
	msg       string
}

// attempt runs the request on the slot's backend. It returns done when the
// request is over (answered, or the client left); otherwise the failure to
// retry. The slot is released on every path.
//
// The usage event is recorded before the end of the answer reaches the
// client (see copy): what a client saw complete is on the replica's spool
// even if the replica dies the next instant.
func (f *Forwarder) attempt(w http.ResponseWriter, r *http.Request, req *Request, slot *routing.Slot, ev *usage.Event, start time.Time) (done bool, fail *failure) {
	ctx := r.Context()
	// The attempt's own context: cancelled when the backend misses its
	// first-byte timeout or the client stops reading, so the backend
	// request ends with it.
	actx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	var clientLeft bool
	defer func() {
		// A backend notices a client's cancel only when it sees the
		// connection close; hold the slot a moment so the next request
		// does not land while the cancelled one is still running there.
		if (clientLeft || ctx.Err() != nil) && f.CancelGrace > 0 {
			time.AfterFunc(f.CancelGrace, slot.Release)
			return
		}
		slot.Release()
	}()
	b, _ := f.Fleet.Backend(slot.Backend)
	call := dialect.Call{Route: req.Route, Body: req.Body, Model: req.Model, Target: slot.Model, Stream: req.Stream, IncludeUsage: req.IncludeUsage, Start: start}
	ev.Endpoint, ev.BackendModel = b.Name, ""
	if call.Renamed() {
		ev.BackendModel = slot.Model
	}
	x, err := b.Dialect.Exchange(call)
	if err != nil {
		req.Error(w, http.StatusBadRequest, err.Error())
		return true, nil
	}
	fb := f.startFirstByte(actx, cancel, req.Stream, slot.Loaded)
	defer fb.stop()
	breq, err := b.NewRequest(fb.ctx, req.Method, x.Path, bytes.NewReader(x.Body))
	if err != nil {
		return false, &failure{msg: err.Error()}
	}
	breq.ContentLength = int64(len(x.Body))
	copyRequestHeaders(breq.Header, r.Header)
	resp, err := b.Client.Do(breq)
	timedOut := !fb.stop() && context.Cause(actx) == errFirstByte
	if err == nil && timedOut {
		// Headers came as the timer fired: the attempt is cancelled anyway.
		resp.Body.Close()
		err = errFirstByte
	}
	if err != nil {
		if ctx.Err() != nil {
			ev.Status, ev.Error = StatusClientClosed, true
			f.finish(req, ev, start, time.Time{}, true)
			return true, nil
		}
		if timedOut {
			// A backend that takes connections and never answers is a
			// failing backend, not a slow client: it counts against the
			// breaker and the request goes on to the next candidate.
			err = fmt.Errorf("no response within routing.first_byte_timeout (%s)", fb.after)
		}
		b.Health.Failure(err, fleet.IsConnectError(err))
		return false, &failure{msg: fmt.Sprintf("backend %s: %v", b.Name, err)}
	}
	defer resp.Body.Close()
	if resp.StatusCode >= 500 {
		// 5xx and Ollama's 503 "server busy" go to the next candidate;
		// the body is kept in case every candidate fails the same way.
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, maxErrorBody))
		err := fmt.Errorf("backend %s: status %d: %s", b.Name, resp.StatusCode, bytes.TrimSpace(msg))
		b.Health.Failure(err, false)
		return false, &failure{transform: x.Transform, status: resp.StatusCode, header: resp.Header.Clone(), body: msg, msg: err.Error()}
	}
	b.Health.Success()
	if !slot.Loaded && resp.StatusCode < 300 {
		// The backend has just loaded the model to answer.
		f.Fleet.NoteLoaded(b.Name, slot.Model)
	}
	ev.Status = resp.StatusCode

	stream := req.Stream || isStreamType(resp.Header.Get("Content-Type"))
	req.keepLimitHeaders(resp.Header)
	if stream {
		// A stream the backend cuts ends with an error event it did not
		// send: its length is not the backend's.
		resp.Header.Del("Content-Length")
	}
	out := f.newOutput(w)
	defer out.clearDeadline()
	filter := writeHead(out, x.Transform, resp.StatusCode, resp.Header)
	c := f.copy(out, filter, resp.Body, stream, x.Complete, !stream && verifyEnd(resp))
	// A stream is whole once its dialect's end marker went by; a plain body
	// only once it was read to its end (and, when only the connection's
	// close ends it, closed its JSON): Ollama's "done":true comes before a
	// non-streamed answer's counts, so a body cut after it is not whole.
	complete := x.Complete != nil && x.Complete(c.meter())
	if !stream {
		complete = c.err == nil && !c.clientGone && (c.shape == nil || c.shape.whole())
	} else if complete && c.err != nil && !c.more && len(c.held) > 0 && c.held[len(c.held)-1] != '\n' {
		// The end marker went by, but the body broke inside the line or
		// event it is in (before the counts after it): not whole.
		complete = false
	}
	// An answer the backend ended cleanly but short is cut as surely as by
	// a broken connection: a stream without its dialect's end marker (no
	// done:true, [DONE], message_stop, response.completed; a translating
	// filter judges its own, see ender), or a plain JSON body whose end only
	// the connection's close marked, stopped mid-document.
	short := c.err == nil && !c.clientGone && ctx.Err() == nil && !complete &&
		((stream && x.Complete != nil && resp.StatusCode < 300 && !filterWhole(filter)) || (c.shape != nil && !c.shape.whole()))
	// Whether the backend's own error ends what it sent (Ollama's error line,
	// Anthropic's or the Responses API's error event): then it needs no other.
	inBand := short && stream && endsInError(c.meter().Tail())
	seq := int64(-1) // the last event's sequence_number (Responses API), for a cut stream's error event
	if (c.err != nil || short) && !complete {
		if n, ok := c.meter().Count("sequence_number"); ok {
			seq = n
		}
	}
	ev.InputTokens, ev.OutputTokens = nil, nil
	if ev.Status < 300 && x.Tokens != nil {
		// Counts seen before the client left or the answer broke are still
		// what the backend reported; but a body that broke off may have
		// ended inside a count's digits or before a count it would have
		// had (a plain body cut between its prompt and its output count),
		// and those are unknown, not zero.
		if !complete && (c.err != nil || c.clientGone || short) {
			c.meter().MarkCut()
		}
		ev.InputTokens, ev.OutputTokens = x.Tokens(c.meter())
	}
	c.release()
	clientLeft = c.clientGone || (c.err != nil && ctx.Err() != nil)
	cut := (c.err != nil && !clientLeft && !complete) || short
	reason := c.err
	if short {
		reason = errShort
	}
	switch {
	case clientLeft && complete:
		// The client left once it had the whole answer (OpenAI's clients
		// hang up at data: [DONE]); nothing was cut short.
		clientLeft = false
	case clientLeft:
		ev.Error = true // the client left; not the backend's fault
		if c.err == nil && c.writeErr != nil && ctx.Err() == nil {
			f.Log.Warn("client stopped reading; ending the request", "backend", b.Name, "model", req.Model, "route", req.Route, "err", c.writeErr)
		}
	case cut:
		ev.Error = true
		err := fmt.Errorf("backend %s: answer broken: %w", b.Name, reason)
		b.Health.Failure(err, false)
		f.Log.Warn("answer cut short by the backend", "backend", b.Name, "model", req.Model, "route", req.Route, "stream", stream, "err", reason)
	}
	if (clientLeft || cut) && stream && ev.Status < 300 && ev.OutputTokens == nil {
		// The backend did the work the client saw: count it from the
		// chunks that went by, flagged partial.
		ev.OutputTokens, ev.Partial = usage.Int64(c.chunks), true
	}
	// A plain body cut before its head went out (a translated answer is
	// held whole until it ends) is answered with an error status instead;
	// counts its part carried are partial.
	headless := cut && !stream && !out.headSent
	if cut && !stream {
		ev.Partial = ev.InputTokens != nil || ev.OutputTokens != nil
		if headless {
			ev.Status = http.StatusBadGateway
		}
	}
	f.finish(req, ev, start, c.ttfb, ev.Error || resp.StatusCode >= 400)
	switch {
	case short && stream && (isEnder(filter) || inBand):
		// The translating filter ends the short stream with the client's
		// error at Close, or the backend's own error already ended it.
		out.end(c, filter, resp.Body, stream)
	case cut && stream:
		if short && filter != nil && filter.Close() != nil {
			return true, nil // the client is gone
		}
		if len(c.held) > 0 && out.chunk(bodyDst(out, filter), c.held, true) != nil {
			return true, nil // the client is gone
		}
		out.streamError(req.Route, fmt.Sprintf("an error was encountered while running the model: %v", streamFault(reason)), seq+1)
	case headless:
		unsetHead(out, resp.Header)
		req.Error(w, http.StatusBadGateway, fmt.Sprintf("backend %s: the answer broke off before its end (%v)", b.Name, reason))
	case cut:
		// No in-band signal exists for a plain body: abort the connection,
		// as httputil.ReverseProxy does, so the client cannot mistake the
		// bytes it got for the whole answer.
		panic(http.ErrAbortHandler)
	case !clientLeft:
		out.end(c, filter, resp.Body, stream)
	}
	return true, nil
}

// writeHead sets the backend's status and headers for the client, through
// the exchange's transform when it has one, and returns the filter the
// body then goes through (nil: none). A filter may change the body's length,
// so Content-Length goes whenever there is one. The head goes out with the
// body's first byte or flush (output.commit).
func writeHead(w *output, transform func(int, http.Header, io.Writer) io.WriteCloser, status int, h http.Header) io.WriteCloser {
	var filter io.WriteCloser
	if transform != nil {
		filter = transform(status, h, w)
	}
	if filter != nil {
		h.Del("Content-Length")
	}
	copyHeaders(w.rw.Header(), h)
	w.status = status
	return filter
}

// unsetHead takes back the headers writeHead set from h, for an answer
// whose head has not gone out and that becomes an error instead.
func unsetHead(w *output, h http.Header) {
	for k := range h {
		if relayed(h, k) {
			w.rw.Header().Del(k)
		}
	}
}

// keepLimitHeaders drops from a backend's headers the x-ratelimit-* ones
// the key's own limits set, so that an upstream's (an OpenAI-type
// backend's account) does not replace them.
func (req *Request) keepLimitHeaders(h http.Header) {
	if req.ticket == nil {
		return
	}
	for k := range req.ticket.Header() {
		h.Del(k)
	}
}

// refuse answers a request over its key's limits: 429 with Retry-After and
// the x-ratelimit-* headers, and a usage event (no tokens) so analytics
// show who was refused.
func (f *Forwarder) refuse(w http.ResponseWriter, req *Request, r *limits.Refusal, ev *usage.Event, start time.Time) {
	for k, v := range r.Header {
		w.Header().Set(k, v)
	}
	w.Header().Set("Retry-After", r.RetryAfterSeconds())
	req.Error(w, http.StatusTooManyRequests, r.Message)
	ev.Status, ev.Attempts = http.StatusTooManyRequests, 0
	f.finish(req, ev, start, time.Time{}, true)
}

// finish stamps the event once, at the end, settles the request's
// reservation with it (before the event goes out, so the ledger knows the
// event id when it comes back on the usage stream) and hands it on.
func (f *Forwarder) finish(req *Request, ev *usage.Event, start, ttfb time.Time, failed bool) {
	end := time.Now()
	ev.ID = usage.NewID()
	ev.Time = end.UTC()
	ev.Error = ev.Error || failed
	ev.DurationMs = float64(end.Sub(start).Microseconds()) / 1000
	if !ttfb.IsZero() {
		ev.TTFBMs = float64(ttfb.Sub(start).Microseconds()) / 1000
	}
	if req.ticket != nil {
		req.ticket.Settle(ev)
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
