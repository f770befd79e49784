package server

import (
	"bytes"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"sync"
	"testing"
	"time"

	"github.com/ollama/ollama/api"
	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"

	"github.com/droverhq/drover/pkg/config"
	"github.com/droverhq/drover/pkg/usage"
	"github.com/droverhq/drover/testkit/ollamatest"
	"github.com/droverhq/drover/testkit/openaitest"
)

// mixedEnv is Drover in front of fake Ollama backends (named o0, o1, ...)
// and fake OpenAI-compatible backends (v0, v1, ...), with the official
// OpenAI and Ollama clients pointed at it and every usage event kept.
type mixedEnv struct {
	t      testing.TB
	ollama []*ollamatest.Server
	oai    []*openaitest.Server
	srv    *Server
	url    string
	oa     openai.Client
	ol     *api.Client
	events *recorder
}

type recorder struct {
	mu     sync.Mutex
	events []usage.Event
}

func (r *recorder) Record(e usage.Event) {
	r.mu.Lock()
	r.events = append(r.events, e)
	r.mu.Unlock()
}

func (r *recorder) all() []usage.Event {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]usage.Event(nil), r.events...)
}

// openAIStubEnv is a mixedEnv whose one backend is the OpenAI-compatible
// server at url, named name (a test's own stub).
func openAIStubEnv(t testing.TB, name, url string) *mixedEnv {
	t.Helper()
	return newMixedEnv(t, 0, nil, func(c *config.Config) {
		c.Backends = append(c.Backends, config.Backend{Name: name, URL: url, Type: "openai"})
	})
}

func newMixedEnv(t testing.TB, nOllama int, oaCfgs []openaitest.Config, mutate func(*config.Config)) *mixedEnv {
	t.Helper()
	e := &mixedEnv{t: t, events: &recorder{}}
	cfg := &config.Config{Replica: "test"}
	for i := range nOllama {
		f := ollamatest.New(ollamatest.Config{})
		if err := f.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(f.Close)
		e.ollama = append(e.ollama, f)
		cfg.Backends = append(cfg.Backends, config.Backend{Name: "o" + string(rune('0'+i)), URL: f.URL()})
	}
	for i, fc := range oaCfgs {
		f := openaitest.New(fc)
		if err := f.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(f.Close)
		e.oai = append(e.oai, f)
		cfg.Backends = append(cfg.Backends, config.Backend{Name: "v" + string(rune('0'+i)), URL: f.URL(), Type: "openai", APIKey: config.Secret(fc.APIKey)})
	}
	cfg.Routing.ConnectTimeout = time.Second
	cfg.Health.ProbeInterval = 50 * time.Millisecond
	cfg.Health.OpenFor = 100 * time.Millisecond
	if mutate != nil {
		mutate(cfg)
	}
	loaded, err := config.FromStruct(cfg)
	if err != nil {
		t.Fatal(err)
	}
	e.srv = New(loaded, slog.New(slog.NewTextHandler(io.Discard, nil)), Options{Sink: e.events})
	hs := httptest.NewServer(e.srv.Handler())
	e.url = hs.URL
	t.Cleanup(func() {
		hs.CloseClientConnections()
		hs.Close()
		e.srv.Close()
	})
	e.oa = openai.NewClient(option.WithBaseURL(e.url+"/v1/"), option.WithAPIKey("unused"), option.WithMaxRetries(0))
	u, _ := url.Parse(e.url)
	e.ol = api.NewClient(u, &http.Client{})
	return e
}

// totals sums Drover's recorded tokens.
func (e *mixedEnv) totals() (in, out int64) {
	for _, models := range e.srv.Totals.Snapshot() {
		for _, c := range models {
			in += c.InputTokens
			out += c.OutputTokens
		}
	}
	return in, out
}

// backendTotals sums what the fake backends produced.
func (e *mixedEnv) backendTotals() (in, out int64) {
	for _, f := range e.ollama {
		c := f.Counters()
		in += c.PromptEvalCount + c.EmbedPromptEvalCount
		out += c.EvalCount
	}
	for _, f := range e.oai {
		c := f.Counters()
		in += c.PromptTokens + c.EmbedTokens
		out += c.CompletionTokens
	}
	return in, out
}

// checkTotals asserts Drover recorded exactly what the backends produced.
func (e *mixedEnv) checkTotals() {
	e.t.Helper()
	// The event of a request is recorded just after its last byte.
	var in, out, bin, bout int64
	deadline := time.Now().Add(5 * time.Second)
	for {
		in, out = e.totals()
		bin, bout = e.backendTotals()
		if (in == bin && out == bout) || time.Now().After(deadline) {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	if in != bin || out != bout || bin == 0 {
		e.t.Fatalf("tokens: drover %d/%d, backends %d/%d", in, out, bin, bout)
	}
}

// raw posts body to path and returns status, headers and the whole body.
func (e *mixedEnv) raw(path, body string) (int, http.Header, []byte) {
	e.t.Helper()
	return e.rawHeader(path, body, "", "")
}

// rawHeader is raw with one request header set.
func (e *mixedEnv) rawHeader(path, body, key, value string) (int, http.Header, []byte) {
	e.t.Helper()
	req, _ := http.NewRequest(http.MethodPost, e.url+path, bytes.NewBufferString(body))
	req.Header.Set("Content-Type", "application/json")
	if key != "" {
		req.Header.Set(key, value)
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
	return resp.StatusCode, resp.Header, b
}

// ollamaServesV1 reports whether testkit/ollamatest serves Ollama's /v1 routes
// (its OpenAI layer is built separately).
func ollamaServesV1(t *testing.T, f *ollamatest.Server) bool {
	t.Helper()
	resp, err := http.Get(f.URL() + "/v1/models")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

func metricsText(t testing.TB, base string) string {
	t.Helper()
	resp, err := http.Get(base + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}
