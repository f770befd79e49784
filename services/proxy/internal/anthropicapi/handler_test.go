package anthropicapi_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/droverhq/drover/pkg/config"
	"github.com/droverhq/drover/pkg/usage"
	"github.com/droverhq/drover/services/proxy/internal/server"
	"github.com/droverhq/drover/testkit/ollamatest"
	"github.com/droverhq/drover/testkit/openaitest"
)

// env is Drover in front of one fake Ollama, whose exchanges are recorded
// as the backend saw them, and optionally one OpenAI-type fake.
type env struct {
	t      *testing.T
	fake   *ollamatest.Server
	url    string
	srv    *server.Server
	events *recorder
	wire   *tee
}

type recorder struct {
	mu     sync.Mutex
	events []usage.Event
}

func (r *recorder) Record(e usage.Event) { r.mu.Lock(); r.events = append(r.events, e); r.mu.Unlock() }

func (r *recorder) all() []usage.Event {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]usage.Event(nil), r.events...)
}

// tee records what the backend received and answered on /v1/messages.
type tee struct {
	next http.Handler
	// hold keeps the connection open after the answer until the request
	// is cancelled, as a backend that has not closed its stream yet.
	hold bool
	mu   sync.Mutex
	req  http.Header
	body bytes.Buffer
}

func (t *tee) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path != "/v1/messages" {
		t.next.ServeHTTP(w, r)
		return
	}
	t.mu.Lock()
	t.req = r.Header.Clone()
	t.body.Reset()
	t.mu.Unlock()
	t.next.ServeHTTP(&teeWriter{ResponseWriter: w, t: t}, r)
	if t.hold {
		http.NewResponseController(w).Flush() //nolint:errcheck // the test reads what arrived
		<-r.Context().Done()
	}
}

func (t *tee) answered() (http.Header, []byte) {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.req, append([]byte(nil), t.body.Bytes()...)
}

type teeWriter struct {
	http.ResponseWriter
	t *tee
}

func (w *teeWriter) Write(p []byte) (int, error) {
	w.t.mu.Lock()
	w.t.body.Write(p)
	w.t.mu.Unlock()
	return w.ResponseWriter.Write(p)
}

func (w *teeWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

func newEnv(t *testing.T, openaiBackend bool, mutate func(*config.Config)) *env {
	t.Helper()
	e := &env{t: t, fake: ollamatest.New(ollamatest.Config{}), events: &recorder{}}
	e.wire = &tee{next: e.fake}
	backend := httptest.NewServer(e.wire)
	t.Cleanup(backend.Close)
	cfg := &config.Config{Replica: "test", Backends: []config.Backend{{Name: "o0", URL: backend.URL}}}
	if openaiBackend {
		oa := openaitest.New(openaitest.Config{Models: []openaitest.Model{{ID: "gpt-only"}}})
		if err := oa.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(oa.Close)
		cfg.Backends = append(cfg.Backends, config.Backend{Name: "v0", URL: oa.URL(), Type: "openai"})
	}
	cfg.Routing.ConnectTimeout = time.Second
	if mutate != nil {
		mutate(cfg)
	}
	loaded, err := config.FromStruct(cfg)
	if err != nil {
		t.Fatal(err)
	}
	e.srv = server.New(loaded, slog.New(slog.NewTextHandler(io.Discard, nil)), server.Options{Sink: e.events})
	hs := httptest.NewServer(e.srv.Handler())
	e.url = hs.URL
	t.Cleanup(func() { hs.CloseClientConnections(); hs.Close(); e.srv.Close() })
	return e
}

type reply struct {
	status int
	header http.Header
	body   []byte
}

func (e *env) post(body string, header ...string) reply {
	e.t.Helper()
	req, err := http.NewRequest(http.MethodPost, e.url+"/v1/messages", strings.NewReader(body))
	if err != nil {
		e.t.Fatal(err)
	}
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		e.t.Fatal(err)
	}
	return reply{resp.StatusCode, resp.Header, b}
}

// event waits for the n-th usage event (1-based).
func (e *env) event(n int) usage.Event {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for {
		if evs := e.events.all(); len(evs) >= n {
			return evs[n-1]
		}
		select {
		case <-ctx.Done():
			e.t.Fatalf("no usage event %d", n)
		case <-time.After(2 * time.Millisecond):
		}
	}
}

const ask = `"messages":[{"role":"user","content":"say three words"}]`

// prompt is the fake's count for ask.
const prompt = 3 + ollamatest.PerMessageTokens

func TestMessagesPassThroughWithExactTokens(t *testing.T) {
	e := newEnv(t, false, nil)
	for i, c := range []struct {
		body, ctype string
		out         int64
	}{
		{`{"model":"tiny","max_tokens":4,` + ask + `}`, "application/json", 4},
		{`{"model":"tiny","max_tokens":6,"stream":true,` + ask + `}`, "text/event-stream", 6},
	} {
		r := e.post(c.body, "Anthropic-Version", "2023-06-01")
		sent, backend := e.wire.answered()
		if r.status != http.StatusOK || r.header.Get("Content-Type") != c.ctype {
			t.Fatalf("%s: %d %s %s", c.body, r.status, r.header.Get("Content-Type"), r.body)
		}
		if !bytes.Equal(r.body, backend) {
			t.Fatalf("%s: the client got\n%s\nthe backend sent\n%s", c.body, r.body, backend)
		}
		if sent.Get("Anthropic-Version") != "2023-06-01" {
			t.Errorf("anthropic-version did not reach the backend: %v", sent)
		}
		ev := e.event(i + 1)
		if ev.Route != "/v1/messages" || ev.Status != 200 || ev.Error || ev.InputTokens == nil || *ev.InputTokens != prompt || ev.OutputTokens == nil || *ev.OutputTokens != c.out {
			t.Errorf("%s: event %+v", c.body, ev)
		}
	}
	if c := e.fake.Counters(); c.PromptEvalCount != 2*prompt || c.EvalCount != 10 {
		t.Errorf("the backend counted %d in, %d out", c.PromptEvalCount, c.EvalCount)
	}
}

func TestMessagesErrorsInAnthropicShape(t *testing.T) {
	e := newEnv(t, true, nil)
	for _, c := range []struct {
		name, body, typ string
		status          int
		fromBackend     bool
	}{
		{"bad JSON", `{bad`, "invalid_request_error", 400, false},
		{"empty body", ``, "invalid_request_error", 400, false},
		{"no model", `{"max_tokens":1,` + ask + `}`, "invalid_request_error", 400, false},
		{"no max_tokens, unknown model", `{"model":"nope",` + ask + `}`, "invalid_request_error", 400, false},
		{"no messages", `{"model":"tiny","max_tokens":1,"messages":[]}`, "invalid_request_error", 400, false},
		{"unknown model", `{"model":"nope","max_tokens":1,` + ask + `}`, "not_found_error", 404, false},
		{"the backend's own 400", `{"model":"tiny","max_tokens":1,"tools":[{"name":"f"}],` + ask + `}`, "invalid_request_error", 400, true},
	} {
		t.Run(c.name, func(t *testing.T) {
			r := e.post(c.body)
			var er struct {
				Type  string `json:"type"`
				Error struct {
					Type    string `json:"type"`
					Message string `json:"message"`
				} `json:"error"`
				RequestID string `json:"request_id"`
			}
			if err := json.Unmarshal(r.body, &er); err != nil || r.status != c.status || er.Type != "error" || er.Error.Type != c.typ || er.Error.Message == "" || !strings.HasPrefix(er.RequestID, "req_") {
				t.Fatalf("%d %s", r.status, r.body)
			}
			if !strings.HasPrefix(r.header.Get("Content-Type"), "application/json") {
				t.Errorf("content type %q", r.header.Get("Content-Type"))
			}
		})
	}
}

func TestMessagesBackendDown(t *testing.T) {
	e := newEnv(t, false, nil)
	if r := e.post(`{"model":"tiny","max_tokens":1,` + ask + `}`); r.status != 200 {
		t.Fatalf("warm-up: %d %s", r.status, r.body)
	}
	e.fake.SetFailure(http.StatusInternalServerError, "boom")
	r := e.post(`{"model":"tiny","max_tokens":1,` + ask + `}`)
	if r.status != http.StatusInternalServerError || !strings.Contains(string(r.body), `"type":"error","error":{"type":"api_error","message":"boom"}`) {
		t.Fatalf("%d %s", r.status, r.body)
	}
}

func TestMessagesXAPIKey(t *testing.T) {
	e := newEnv(t, false, func(c *config.Config) {
		c.Auth.Keys = []config.APIKey{{ID: "team-a", Key: "secret-a"}}
	})
	body := `{"model":"tiny","max_tokens":2,` + ask + `}`
	for _, c := range []struct {
		name   string
		header []string
		status int
	}{
		{"no key", nil, 401},
		{"wrong key", []string{"X-Api-Key", "nope"}, 401},
		{"x-api-key", []string{"X-Api-Key", "secret-a"}, 200},
		{"bearer", []string{"Authorization", "Bearer secret-a"}, 200},
	} {
		r := e.post(body, c.header...)
		if r.status != c.status {
			t.Fatalf("%s: %d %s", c.name, r.status, r.body)
		}
		if c.status == 401 && !strings.Contains(string(r.body), `"type":"error","error":{"type":"authentication_error"`) {
			t.Errorf("%s: %s", c.name, r.body)
		}
		if c.status == 200 {
			sent, _ := e.wire.answered()
			if sent.Get("X-Api-Key") != "" || sent.Get("Authorization") != "" {
				t.Errorf("%s: the client's key reached the backend: %v", c.name, sent)
			}
		}
	}
	if ev := e.event(2); ev.APIKey != "team-a" {
		t.Errorf("event key %q", ev.APIKey)
	}
}

// A full queue is Drover's own 503, in Anthropic's shape with the type
// Anthropic (and Ollama) give it: overloaded_error.
func TestMessagesQueueFullIsOverloaded(t *testing.T) {
	e := newEnv(t, false, func(c *config.Config) {
		c.Routing.MaxConcurrency = 1
		c.Routing.Queue.MaxLength = 1
	})
	body := `{"model":"tiny","max_tokens":1,` + ask + `}`
	if r := e.post(body); r.status != 200 {
		t.Fatalf("warm-up: %d %s", r.status, r.body)
	}
	e.fake.SetHang(true)
	done := make(chan struct{}, 2)
	for range 2 {
		go func() {
			defer func() { done <- struct{}{} }()
			req, _ := http.NewRequest(http.MethodPost, e.url+"/v1/messages", strings.NewReader(body))
			if resp, err := http.DefaultClient.Do(req); err == nil {
				io.Copy(io.Discard, resp.Body) //nolint:errcheck
				resp.Body.Close()
			}
		}()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for e.srv.Router.QueueLen() != 1 {
		select {
		case <-ctx.Done():
			t.Fatal("the second request never queued")
		case <-time.After(2 * time.Millisecond):
		}
	}
	r := e.post(body)
	e.fake.SetHang(false)
	<-done
	<-done
	if r.status != http.StatusServiceUnavailable || r.header.Get("Retry-After") == "" || !strings.Contains(string(r.body), `"type":"error","error":{"type":"overloaded_error"`) {
		t.Fatalf("queue full: %d %v %s", r.status, r.header, r.body)
	}
}

// A client that hangs up once it has message_stop missed nothing: the
// request is not an error, and its counts are recorded.
func TestMessagesClientLeavingAfterMessageStop(t *testing.T) {
	for _, c := range []struct {
		name, fault, until string
		wantError          bool
	}{
		{"after message_stop", "", "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n", false},
		// The control: a backend that stopped sending mid-way.
		{"mid-way", `{"hang_after_chunks":2}`, `"text":" three"}}` + "\n\n", true},
	} {
		t.Run(c.name, func(t *testing.T) {
			e := newEnv(t, false, nil)
			e.wire.hold = true
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			req, _ := http.NewRequestWithContext(ctx, http.MethodPost, e.url+"/v1/messages",
				strings.NewReader(`{"model":"tiny","max_tokens":3,"stream":true,`+ask+`}`))
			if c.fault != "" {
				req.Header.Set(ollamatest.FaultHeader, c.fault)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			var got []byte
			buf := make([]byte, 4096)
			for !bytes.Contains(got, []byte(c.until)) {
				n, err := resp.Body.Read(buf)
				got = append(got, buf[:n]...)
				if err != nil {
					t.Fatalf("stream ended before %q: %v\n%s", c.until, err, got)
				}
			}
			cancel()
			resp.Body.Close()
			ev := e.event(1)
			// A stream left mid-way records what was streamed, flagged partial.
			if ev.Error != c.wantError || ev.Status != 200 || ev.Partial != c.wantError {
				t.Fatalf("event %+v, want error and partial %v", ev, c.wantError)
			}
			if c.wantError && (ev.OutputTokens == nil || *ev.OutputTokens < 1) {
				t.Fatalf("partial output not counted: %+v", ev)
			}
			if !c.wantError && (ev.OutputTokens == nil || *ev.OutputTokens != 3) {
				t.Fatalf("counts lost: %+v", ev)
			}
		})
	}
}
