package forward

import (
	"bytes"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/droverhq/drover/pkg/config"
	"github.com/droverhq/drover/pkg/usage"
	"github.com/droverhq/drover/services/proxy/internal/fleet"
	"github.com/droverhq/drover/services/proxy/internal/routing"
	"github.com/droverhq/drover/testkit/ollamatest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		// net/http's idle connections linger by design.
		goleak.IgnoreTopFunction("internal/poll.runtime_pollWait"),
		goleak.IgnoreTopFunction("net/http.(*persistConn).writeLoop"),
		goleak.IgnoreTopFunction("net/http.(*persistConn).readLoop"),
	)
}

// cutHeader names the text a cutting backend stops its body at: the body
// as the fake Ollama wrote it goes out up to the text's last occurrence
// (plus cutExtra bytes of it), then the connection drops, as when a backend
// dies mid-body.
const (
	cutHeader = "X-Cut-Before"
	cutExtra  = "X-Cut-Extra"
)

// cuttingBackend is the fake Ollama behind a front that, for a request
// carrying cutHeader, lets the fake write its whole non-streamed answer,
// then sends the client only the part before the cut, chunked, and aborts
// the connection: the proxy's transport sees an unexpected EOF.
func cuttingBackend(t *testing.T) *httptest.Server {
	t.Helper()
	fake := ollamatest.New(ollamatest.Config{})
	s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		at := r.Header.Get(cutHeader)
		if at == "" {
			fake.ServeHTTP(w, r)
			return
		}
		rec := httptest.NewRecorder()
		fake.ServeHTTP(rec, r)
		body := rec.Body.Bytes()
		i := bytes.LastIndex(body, []byte(at))
		if i < 0 {
			t.Errorf("%s answer has no %q to cut at:\n%s", r.URL.Path, at, body)
			panic(http.ErrAbortHandler)
		}
		var extra int
		fmt.Sscan(r.Header.Get(cutExtra), &extra) //nolint:errcheck // absent: 0
		w.Header().Set("Content-Type", rec.Header().Get("Content-Type"))
		w.WriteHeader(rec.Code)
		w.Write(body[:i+extra])               //nolint:errcheck // then cut
		http.NewResponseController(w).Flush() //nolint:errcheck // then cut
		panic(http.ErrAbortHandler)
	}))
	t.Cleanup(s.Close)
	return s
}

type events struct {
	mu  sync.Mutex
	evs []usage.Event
}

func (e *events) Record(ev usage.Event) { e.mu.Lock(); e.evs = append(e.evs, ev); e.mu.Unlock() }

func (e *events) only(t *testing.T) usage.Event {
	t.Helper()
	e.mu.Lock()
	evs := e.evs
	e.evs = nil
	e.mu.Unlock()
	if len(evs) != 1 {
		t.Fatalf("%d events recorded, want 1", len(evs))
	}
	return evs[0]
}

// cutEnv is a Forwarder over one cutting Ollama backend, served on route
// for non-streamed requests of model "tiny".
func cutEnv(t *testing.T) (proxy string, rec *events) {
	t.Helper()
	backend := cuttingBackend(t)
	cfg, err := config.FromStruct(&config.Config{Replica: "test", Backends: []config.Backend{{Name: "o", URL: backend.URL}}})
	if err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	fl := fleet.New(cfg, log, fleet.Hooks{})
	t.Cleanup(fl.Close)
	rec = &events{}
	fw := &Forwarder{Fleet: fl, Router: routing.New(routing.Options{MaxQueue: 10, MaxWait: time.Second}, nil), Sink: rec, Replica: "test", MaxAttempts: 1, Log: log}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		fw.Serve(w, r, &Request{Route: r.URL.Path, Method: r.Method, Body: body, Model: "tiny",
			Error: func(w http.ResponseWriter, status int, msg string) { http.Error(w, msg, status) }})
	}))
	t.Cleanup(srv.Close)
	return srv.URL, rec
}

// A non-streamed answer whose backend dies between its prompt count and
// its output count: the output tokens are unknown (null, counted in
// tokens_unknown), not 0, and the prompt count the body did carry is
// recorded, flagged partial; a count cut inside its digits is unknown too.
// The client's connection is aborted (a plain body has no in-band error).
// At the parent commit the /v1 cases recorded output_tokens 0, and the
// /api cases were not even seen as cut: Ollama writes "done":true before a
// non-streamed answer's counts, which made the body look whole, so the
// client got a clean 200 with half a JSON document and the event was a
// success with output_tokens 0.
func TestNonStreamCutBetweenCounts(t *testing.T) {
	proxy, rec := cutEnv(t)
	chat := `{"model":"tiny","messages":[{"role":"user","content":"one two three"}],"stream":false}`
	for _, tc := range []struct {
		name, route, body, at string
		extra                 int
		in                    bool // the prompt count is known
	}{
		{"/api/chat before eval_count", "/api/chat", chat, `"eval_count"`, 0, true},
		{"/api/generate before eval_count", "/api/generate", `{"model":"tiny","prompt":"one two three","stream":false}`, `"eval_count"`, 0, true},
		{"/api/chat inside prompt_eval_count's digits", "/api/chat", chat, `"prompt_eval_count":`, len(`"prompt_eval_count":`) + 1, false},
		{"/v1/chat/completions before completion_tokens", "/v1/chat/completions", chat, `"completion_tokens"`, 0, true},
		{"/v1/responses before output_tokens", "/v1/responses", `{"model":"tiny","input":"one two three"}`, `"output_tokens"`, 0, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req, err := http.NewRequestWithContext(t.Context(), http.MethodPost, proxy+tc.route, strings.NewReader(tc.body))
			if err != nil {
				t.Fatal(err)
			}
			req.Header.Set(cutHeader, tc.at)
			req.Header.Set(cutExtra, fmt.Sprint(tc.extra))
			resp, err := http.DefaultClient.Do(req)
			if err == nil {
				_, err = io.ReadAll(resp.Body)
				resp.Body.Close()
			}
			ev := rec.only(t)
			if err == nil {
				t.Fatalf("the cut answer reached the client as whole (status %d), recorded as error %v, output %v", resp.StatusCode, ev.Error, ptr(ev.OutputTokens))
			}
			if !ev.Error || ev.OutputTokens != nil || (ev.InputTokens != nil) != tc.in || ev.Partial != tc.in || (tc.in && *ev.InputTokens == 0) {
				t.Fatalf("recorded as error %v, input %v, output %v, partial %v; want an error, output unknown, input known %v, partial %v",
					ev.Error, ptr(ev.InputTokens), ptr(ev.OutputTokens), ev.Partial, tc.in, tc.in)
			}
		})
	}
	// The same backend, uncut: the counts are read as they are.
	resp, err := http.Post(proxy+"/api/chat", "application/json", strings.NewReader(chat))
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body) //nolint:errcheck // only the event counts
	resp.Body.Close()
	if ev := rec.only(t); ev.Error || ev.Partial || ev.InputTokens == nil || ev.OutputTokens == nil || *ev.OutputTokens == 0 {
		t.Fatalf("whole answer recorded as error %v, partial %v, input %v, output %v", ev.Error, ev.Partial, ptr(ev.InputTokens), ptr(ev.OutputTokens))
	}
}

func ptr(p *int64) any {
	if p == nil {
		return nil
	}
	return *p
}

// A stream whose last chunk is cut after its end marker but before its
// counts (Ollama's generate carries its context array between "done":true
// and the counts, so that line often spans reads; a Response's
// response.completed event carries the whole response before its usage):
// the marker alone does not make it whole. The client gets what came of
// the line, then its API's error; the event is an error, partial, with the
// output tokens counted from the chunks streamed and the prompt count the
// cut line carried. At the parent commit the /api/generate client got a
// clean end after half a line and the event was a success with
// output_tokens 0.
func TestStreamCutInsideItsLastChunk(t *testing.T) {
	proxy, rec := cutEnv(t)
	for _, tc := range []struct {
		route, body, at, clientEnd string
	}{
		{"/api/generate", `{"model":"tiny","prompt":"one two three"}`, `"eval_count"`, "{\"error\":\"an error was encountered while running the model: "},
		{"/v1/responses", `{"model":"tiny","input":"one two three","stream":true}`, `"output_tokens"`, "event: error\ndata: {\"type\":\"error\""},
	} {
		t.Run(tc.route, func(t *testing.T) {
			req, err := http.NewRequestWithContext(t.Context(), http.MethodPost, proxy+tc.route, strings.NewReader(tc.body))
			if err != nil {
				t.Fatal(err)
			}
			req.Header.Set(cutHeader, tc.at)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			got, _ := io.ReadAll(resp.Body) // the stream's error is in-band
			resp.Body.Close()
			ev := rec.only(t)
			if !bytes.Contains(got, []byte(tc.clientEnd)) {
				t.Fatalf("client got\n%s\nwant the stream's error after the cut line", got[max(0, len(got)-300):])
			}
			if !ev.Error || !ev.Partial || ev.OutputTokens == nil || *ev.OutputTokens == 0 || ev.InputTokens == nil || *ev.InputTokens == 0 {
				t.Fatalf("recorded as error %v, partial %v, input %v, output %v; want an error, partial, the prompt count and the chunks streamed",
					ev.Error, ev.Partial, ptr(ev.InputTokens), ptr(ev.OutputTokens))
			}
		})
	}
}
