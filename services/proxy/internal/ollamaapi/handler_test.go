package ollamaapi

import (
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-chi/chi/v5"
	"go.uber.org/goleak"

	"github.com/droverhq/drover/pkg/config"
	"github.com/droverhq/drover/pkg/usage"
	"github.com/droverhq/drover/services/proxy/internal/fleet"
	"github.com/droverhq/drover/services/proxy/internal/forward"
	"github.com/droverhq/drover/services/proxy/internal/routing"
	"github.com/droverhq/drover/testkit/ollamatest"
	"github.com/droverhq/drover/testkit/openaitest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		// net/http's idle connections linger by design.
		goleak.IgnoreTopFunction("internal/poll.runtime_pollWait"),
		goleak.IgnoreTopFunction("net/http.(*persistConn).writeLoop"),
		goleak.IgnoreTopFunction("net/http.(*persistConn).readLoop"),
	)
}

func TestLoadOnly(t *testing.T) {
	cases := []struct {
		route, body  string
		load, unload bool
	}{
		{"/api/chat", `{"model":"m"}`, true, false},
		{"/api/chat", `{"model":"m","messages":[]}`, true, false},
		{"/api/chat", `{"model":"m","messages":[],"keep_alive":0}`, true, true},
		{"/api/chat", `{"model":"m","messages":[{"role":"user","content":"hi"}]}`, false, false},
		{"/api/generate", `{"model":"m"}`, true, false},
		{"/api/generate", `{"model":"m","prompt":""}`, true, false},
		{"/api/generate", `{"model":"m","keep_alive":"0s"}`, true, true},
		{"/api/generate", `{"model":"m","keep_alive":"0"}`, true, true},
		{"/api/generate", `{"model":"m","keep_alive":"5m"}`, true, false},
		{"/api/generate", `{"model":"m","prompt":"hi"}`, false, false},
		{"/api/generate", `{"model":"m","images":["aGk="]}`, false, false},
		{"/api/embed", `{"model":"m"}`, true, false},
		{"/api/embed", `{"model":"m","input":null}`, true, false},
		{"/api/embed", `{"model":"m","input":""}`, true, false},
		{"/api/embed", `{"model":"m","input":[]}`, true, false},
		{"/api/embed", `{"model":"m","input":"hi"}`, false, false},
		{"/api/embed", `{"model":"m","input":["hi"]}`, false, false},
		{"/api/embeddings", `{"model":"m"}`, true, false},
		{"/api/embeddings", `{"model":"m","prompt":"hi"}`, false, false},
		{"/api/chat", `not json`, false, false},
	}
	for _, c := range cases {
		load, unload := loadOnly(c.route, []byte(c.body))
		if load != c.load || unload != c.unload {
			t.Errorf("%s %s: got load %v unload %v", c.route, c.body, load, unload)
		}
	}
}

// env is the Ollama API over one fake Ollama ("o") and one fake
// OpenAI-compatible server ("v"). Both serve "tiny"; only o has "tiny2",
// only v "tiny-reason".
type env struct {
	url    string
	ollama *ollamatest.Server
	oai    *openaitest.Server
	events *recorder
}

type recorder struct {
	mu     sync.Mutex
	events []usage.Event
}

func (r *recorder) Record(e usage.Event) { r.mu.Lock(); r.events = append(r.events, e); r.mu.Unlock() }

func (r *recorder) last() usage.Event {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.events[len(r.events)-1]
}

func newEnv(t *testing.T) *env {
	t.Helper()
	e := &env{ollama: ollamatest.New(ollamatest.Config{}), oai: openaitest.New(openaitest.Config{}), events: &recorder{}}
	if err := e.ollama.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.ollama.Close)
	if err := e.oai.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.oai.Close)
	cfg := &config.Config{Replica: "test", Backends: []config.Backend{
		{Name: "o", URL: e.ollama.URL()},
		{Name: "v", URL: e.oai.URL(), Type: "openai"},
	}}
	cfg.Routing.ConnectTimeout = time.Second
	cfg, err := config.FromStruct(cfg)
	if err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	f := fleet.New(cfg, log, fleet.Hooks{})
	t.Cleanup(f.Close)
	fw := &forward.Forwarder{Fleet: f, Router: routing.New(routing.Options{MaxQueue: 10, MaxWait: time.Second}, nil),
		Sink: e.events, Replica: "test", MaxAttempts: 2, Log: log}
	r := chi.NewRouter()
	r.NotFound(NotFound)
	r.MethodNotAllowed(MethodNotAllowed)
	(&Handler{Fleet: f, Forward: fw, Log: log}).Routes(r)
	srv := httptest.NewServer(r)
	t.Cleanup(srv.Close)
	e.url = srv.URL
	return e
}

func (e *env) do(t *testing.T, method, path, body string) (int, http.Header, string) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), method, e.url+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, resp.Header, string(b)
}

// Inference goes to the backend that has the model, in that backend's
// dialect: as sent to Ollama, translated for an OpenAI-compatible server
// and translated back, counted either way.
func TestInferenceRoutedByDialect(t *testing.T) {
	e := newEnv(t)
	chat := `{"model":%q,"messages":[{"role":"user","content":"one two three"}],"stream":false}`

	status, _, body := e.do(t, http.MethodPost, "/api/chat", sprintf(chat, "tiny-reason"))
	var reply struct {
		Model   string `json:"model"`
		Done    bool   `json:"done"`
		Message struct {
			Content string `json:"content"`
		} `json:"message"`
		PromptEvalCount int `json:"prompt_eval_count"`
	}
	if err := json.Unmarshal([]byte(body), &reply); err != nil || status != http.StatusOK || !reply.Done || reply.Model != "tiny-reason" || reply.Message.Content == "" {
		t.Fatalf("chat on the OpenAI-compatible server: %d %s", status, body)
	}
	if e.oai.Requests("/v1/chat/completions") != 1 || e.ollama.Requests("/api/chat") != 0 {
		t.Fatalf("translated chat reached v %d times, o %d times", e.oai.Requests("/v1/chat/completions"), e.ollama.Requests("/api/chat"))
	}
	if ev := e.events.last(); ev.Endpoint != "v" || ev.InputTokens == nil || *ev.InputTokens != int64(reply.PromptEvalCount) || *ev.InputTokens == 0 {
		t.Fatalf("translated chat recorded as %+v", ev)
	}

	status, _, body = e.do(t, http.MethodPost, "/api/chat", sprintf(chat, "tiny2"))
	if status != http.StatusOK || e.ollama.Requests("/api/chat") != 1 || e.oai.Requests("/v1/chat/completions") != 1 {
		t.Fatalf("chat on Ollama: %d %s", status, body)
	}
	if ev := e.events.last(); ev.Endpoint != "o" || ev.InputTokens == nil || *ev.InputTokens == 0 {
		t.Fatalf("Ollama chat recorded as %+v", ev)
	}
}

// A request that only loads a model goes to backends that load on request;
// for a model only others serve, Drover answers it itself.
func TestLoadOnlyRouting(t *testing.T) {
	e := newEnv(t)
	status, hdr, body := e.do(t, http.MethodPost, "/api/chat", `{"model":"tiny-reason","stream":false}`)
	if status != http.StatusOK || !strings.Contains(body, `"done_reason":"load"`) || !strings.HasPrefix(hdr.Get("Content-Type"), "application/json") {
		t.Fatalf("load of a model only v has: %d %s", status, body)
	}
	status, hdr, body = e.do(t, http.MethodPost, "/api/generate", `{"model":"tiny-reason","keep_alive":0}`)
	if status != http.StatusOK || !strings.Contains(body, `"done_reason":"unload"`) || hdr.Get("Content-Type") != "application/x-ndjson" {
		t.Fatalf("streamed unload of a model only v has: %d %q %s", status, hdr.Get("Content-Type"), body)
	}
	if n := e.oai.Requests("/v1/chat/completions") + e.oai.Requests("/v1/completions") + e.ollama.Requests("/api/chat") + e.ollama.Requests("/api/generate"); n != 0 {
		t.Fatalf("%d load requests reached a backend", n)
	}
	// "tiny" is on both, loaded only on v (it lists no status): routing
	// alone would prefer v.
	for range 3 {
		if status, _, body := e.do(t, http.MethodPost, "/api/chat", `{"model":"tiny","stream":false}`); status != http.StatusOK {
			t.Fatalf("load of tiny: %d %s", status, body)
		}
	}
	if e.ollama.Requests("/api/chat") != 3 || e.oai.Requests("/v1/chat/completions") != 0 {
		t.Fatalf("loads went to o %d times, v %d times", e.ollama.Requests("/api/chat"), e.oai.Requests("/v1/chat/completions"))
	}
}

// Errors are in Ollama's shapes and words.
func TestErrorShapes(t *testing.T) {
	e := newEnv(t)
	const jsonCT = "application/json; charset=utf-8"
	cases := []struct {
		name, method, path, body string
		status                   int
		ct, want                 string
	}{
		{"unknown path", http.MethodGet, "/api/nope", "", 404, "text/plain", "404 page not found"},
		{"wrong method", http.MethodGet, "/api/chat", "", 405, "text/plain", "405 method not allowed"},
		{"empty body", http.MethodPost, "/api/chat", "", 400, jsonCT, `{"error":"missing request body"}`},
		{"malformed body", http.MethodPost, "/api/chat", "{", 400, jsonCT, `{"error":"unexpected EOF"}`},
		{"mistyped model", http.MethodPost, "/api/generate", `{"model":1}`, 400, jsonCT,
			`{"error":"json: cannot unmarshal number into Go struct field GenerateRequest.model of type string"}`},
		{"unknown model", http.MethodPost, "/api/chat", `{"model":"nope","messages":[{"role":"user","content":"x"}]}`, 404, jsonCT,
			`{"error":"model 'nope' not found"}`},
		{"unknown embedding model", http.MethodPost, "/api/embed", `{"model":"nope","input":"x"}`, 404, jsonCT,
			`{"error":"model \"nope\" not found, try pulling it first"}`},
		{"unknown model shown", http.MethodPost, "/api/show", `{"model":"nope"}`, 404, jsonCT, `{"error":"model 'nope' not found"}`},
	}
	for _, c := range cases {
		status, hdr, body := e.do(t, c.method, c.path, c.body)
		if status != c.status || hdr.Get("Content-Type") != c.ct || strings.TrimSpace(body) != c.want {
			t.Errorf("%s: got %d %q %s, want %d %q %s", c.name, status, hdr.Get("Content-Type"), body, c.status, c.ct, c.want)
		}
	}
}

func sprintf(format, model string) string { return strings.Replace(format, "%q", `"`+model+`"`, 1) }

// A wrong method is answered as gin answers it, with Allow listing the
// path's methods in Ollama's order (checked against Ollama 0.17.4).
func TestMethodNotAllowedAllow(t *testing.T) {
	e := newEnv(t)
	cases := []struct{ method, path, allow string }{
		{http.MethodGet, "/api/chat", "POST"},
		{http.MethodHead, "/api/chat", "POST"},
		{http.MethodPatch, "/api/tags", "HEAD, GET"},
		{http.MethodPost, "/", "HEAD, GET"},
		{http.MethodGet, "/api/blobs/sha256:abc", "HEAD, POST"},
		{http.MethodPost, "/api/delete", "DELETE"},
	}
	for _, c := range cases {
		status, hdr, body := e.do(t, c.method, c.path, "")
		want := "405 method not allowed"
		if c.method == http.MethodHead {
			want = ""
		}
		if status != 405 || hdr.Get("Allow") != c.allow || hdr.Get("Content-Type") != "text/plain" || body != want {
			t.Errorf("%s %s: got %d Allow %q %q %q, want 405 Allow %q", c.method, c.path, status, hdr.Get("Allow"), hdr.Get("Content-Type"), body, c.allow)
		}
	}
}
