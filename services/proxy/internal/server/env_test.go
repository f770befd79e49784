package server

import (
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"testing"
	"time"

	"github.com/ollama/ollama/api"
	"go.uber.org/goleak"

	"github.com/droverhq/drover/pkg/config"
	"github.com/droverhq/drover/testkit/ollamatest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		// The Ollama client's and net/http's idle connections linger by design.
		goleak.IgnoreTopFunction("internal/poll.runtime_pollWait"),
		goleak.IgnoreTopFunction("net/http.(*persistConn).writeLoop"),
		goleak.IgnoreTopFunction("net/http.(*persistConn).readLoop"),
	)
}

// env is Drover in front of fake Ollama backends, all in-process.
type env struct {
	t      *testing.T
	fakes  []*ollamatest.Server
	srv    *Server
	http   *httptest.Server
	url    string
	client *api.Client
}

// newEnv starts n fakes (configured by fake, if set) and a Drover replica
// over them (configured by mutate, if set).
func newEnv(t *testing.T, n int, fake func(i int, c *ollamatest.Config), mutate func(*config.Config)) *env {
	t.Helper()
	return newEnvOpts(t, n, fake, mutate, Options{})
}

// newEnvOpts is newEnv with server options (a ClickHouse store, say).
func newEnvOpts(t *testing.T, n int, fake func(i int, c *ollamatest.Config), mutate func(*config.Config), opts Options) *env {
	t.Helper()
	e := &env{t: t}
	cfg := &config.Config{Replica: "test"}
	for i := range n {
		fc := ollamatest.Config{}
		if fake != nil {
			fake(i, &fc)
		}
		f := ollamatest.New(fc)
		if err := f.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(f.Close)
		e.fakes = append(e.fakes, f)
		cfg.Backends = append(cfg.Backends, config.Backend{Name: string(rune('a' + i)), URL: f.URL()})
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
	e.srv = New(loaded, slog.New(slog.NewTextHandler(io.Discard, nil)), opts)
	e.http = httptest.NewServer(e.srv.Handler())
	e.url = e.http.URL
	t.Cleanup(func() {
		e.http.CloseClientConnections()
		e.http.Close()
		e.srv.Close()
	})
	u, _ := url.Parse(e.url)
	e.client = api.NewClient(u, &http.Client{})
	return e
}
