package fleet

import (
	"errors"
	"io"
	"log/slog"
	"slices"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/droverhq/drover/pkg/config"
	"github.com/droverhq/drover/services/proxy/internal/backend"
	"github.com/droverhq/drover/services/proxy/internal/catalog"
	"github.com/droverhq/drover/services/proxy/internal/dialect"
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

// testFleet is a fleet over one fake Ollama ("o") and one fake
// OpenAI-compatible server ("v"), both serving "tiny".
type testFleet struct {
	*Fleet
	ollama *ollamatest.Server
	oai    *openaitest.Server
}

func newTestFleet(t *testing.T, mutate func(*config.Config)) *testFleet {
	t.Helper()
	o := ollamatest.New(ollamatest.Config{})
	if err := o.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(o.Close)
	v := openaitest.New(openaitest.Config{})
	if err := v.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(v.Close)
	cfg := &config.Config{Replica: "test", Backends: []config.Backend{
		{Name: "o", URL: o.URL()},
		{Name: "v", URL: v.URL(), Type: "openai"},
	}}
	cfg.Routing.ConnectTimeout = time.Second
	if mutate != nil {
		mutate(cfg)
	}
	loaded, err := config.FromStruct(cfg)
	if err != nil {
		t.Fatal(err)
	}
	f := New(loaded, slog.New(slog.NewTextHandler(io.Discard, nil)), Hooks{})
	t.Cleanup(f.Close)
	return &testFleet{Fleet: f, ollama: o, oai: v}
}

func backends(cands []routing.Candidate) []string {
	var out []string
	for _, c := range cands {
		out = append(out, c.Backend)
	}
	slices.Sort(out)
	return out
}

// Which backends are candidates is asked of each backend's dialect.
func TestCandidatesByDialect(t *testing.T) {
	f := newTestFleet(t, nil)
	cases := []struct {
		name    string
		model   string
		exclude map[string]bool
		routes  []string
		want    []string
		err     error
	}{
		{"any route", "tiny", nil, nil, []string{"o", "v"}, nil},
		{"both serve /api/chat", "tiny", nil, []string{"/api/chat"}, []string{"o", "v"}, nil},
		{"both serve /v1/chat/completions", "tiny", nil, []string{"/v1/chat/completions"}, []string{"o", "v"}, nil},
		{"only OpenAI-compatible servers rerank", "tiny", nil, []string{"/v1/rerank"}, []string{"v"}, nil},
		{"only Ollama loads on request", "tiny", nil, []string{"/api/generate", dialect.Load}, []string{"o"}, nil},
		{"only Ollama answers /api/show", "tiny", nil, []string{"/api/show"}, []string{"o"}, nil},
		{"an empty route asks nothing", "tiny", nil, []string{"/v1/rerank", ""}, []string{"v"}, nil},
		{"excluded backends are skipped", "tiny", map[string]bool{"v": true}, []string{"/api/chat"}, []string{"o"}, nil},
		{"a model no eligible backend has", "tiny-rerank", nil, []string{dialect.Load}, nil, ErrModelNotFound},
		{"a model nobody has", "nope", nil, nil, nil, ErrModelNotFound},
	}
	for _, c := range cases {
		cands, err := f.Candidates(t.Context(), c.model, c.exclude, c.routes...)
		if !errors.Is(err, c.err) || !slices.Equal(backends(cands), c.want) {
			t.Errorf("%s: got %v %v, want %v %v", c.name, backends(cands), err, c.want, c.err)
		}
	}
}

// Reachable is the fan-out targets: serving the route, breaker not open.
func TestReachable(t *testing.T) {
	f := newTestFleet(t, nil)
	names := func(routes ...string) []string {
		var out []string
		for _, b := range f.Reachable(routes...) {
			out = append(out, b.Name)
		}
		return out
	}
	if got := names("/api/pull"); !slices.Equal(got, []string{"o"}) {
		t.Errorf("/api/pull: %v", got)
	}
	if got := names("/v1/models"); !slices.Equal(got, []string{"o", "v"}) {
		t.Errorf("/v1/models: %v", got)
	}
	b, _ := f.Backend("o")
	b.Health.Failure(errors.New("down"), true)
	if got := names("/v1/models"); !slices.Equal(got, []string{"v"}) {
		t.Errorf("/v1/models with o open: %v", got)
	}
}

func TestAliases(t *testing.T) {
	f := newTestFleet(t, func(c *config.Config) {
		c.Aliases = map[string][]config.Alias{"pub": {
			{Backend: "o", Model: "tiny2"},
			{Backend: "v", Model: "tiny-reason"},
			{Backend: "v", Model: "missing"},
		}}
	})
	cands, err := f.Candidates(t.Context(), "pub", nil)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, c := range cands {
		got[c.Backend] = catalog.Normalize(c.Model)
	}
	if len(got) != 2 || got["o"] != "tiny2:latest" || got["v"] != "tiny-reason:latest" {
		t.Fatalf("alias targets %v", got)
	}
	// An alias is only its targets: the public name's own backends are not
	// asked, and a route narrows the targets as for any model.
	if cands, _ := f.Candidates(t.Context(), "pub", nil, dialect.Load); len(cands) != 1 || cands[0].Backend != "o" {
		t.Fatalf("alias with Load: %v", cands)
	}
	if _, ok := f.Aliases()["pub"]; !ok {
		t.Fatal("aliases are reported as configured")
	}
}

// A list past its TTL is served at once, stale, while one refresh reads the
// backend again.
func TestModelListsStaleWhileRevalidate(t *testing.T) {
	f := newTestFleet(t, func(c *config.Config) {
		c.Cache.ModelsTTL = time.Nanosecond
		c.Cache.ModelsStale = time.Hour
	})
	b, _ := f.Backend("o")
	l, err := f.Models(t.Context(), b)
	if err != nil || !l.Has("tiny") || l.Has("fresh") {
		t.Fatalf("first read: %v %v", l, err)
	}
	reads := f.ollama.Requests("/api/tags")
	f.ollama.AddModel(ollamatest.Model{Name: "fresh"})
	if l, err := f.Models(t.Context(), b); err != nil || l.Has("fresh") {
		t.Fatalf("a stale read waited for the backend: %v", err)
	}
	eventually(t, "the stale list is refreshed", func() bool {
		l, err := f.Models(t.Context(), b)
		return err == nil && l.Has("fresh")
	})
	if f.ollama.Requests("/api/tags") <= reads {
		t.Fatal("no refresh reached the backend")
	}
}

// Invalidate drops what is cached, so the next read goes to the backend,
// and tells the fleet; InvalidateLocal tells no one.
func TestInvalidate(t *testing.T) {
	f := newTestFleet(t, func(c *config.Config) {
		c.Cache.ModelsTTL, c.Cache.ModelsStale = time.Hour, time.Hour
	})
	var mu sync.Mutex
	var told [][]string
	f.OnInvalidate = func(bs []string) { mu.Lock(); told = append(told, bs); mu.Unlock() }
	b, _ := f.Backend("o")
	if _, err := f.Models(t.Context(), b); err != nil {
		t.Fatal(err)
	}
	f.ollama.AddModel(ollamatest.Model{Name: "fresh"})
	if l, _ := f.Models(t.Context(), b); l.Has("fresh") {
		t.Fatal("a fresh list was read again: the test shows nothing")
	}
	f.InvalidateLocal("o")
	if l, _ := f.Models(t.Context(), b); !l.Has("fresh") {
		t.Fatal("InvalidateLocal kept the old list")
	}
	f.ollama.AddModel(ollamatest.Model{Name: "fresher"})
	f.Invalidate("o")
	if l, _ := f.Models(t.Context(), b); !l.Has("fresher") {
		t.Fatal("Invalidate kept the old list")
	}
	mu.Lock()
	defer mu.Unlock()
	if len(told) != 1 || !slices.Equal(told[0], []string{"o"}) {
		t.Fatalf("OnInvalidate got %v, want one call for o", told)
	}
}

// A backend whose breaker opened is probed where its dialect says, and
// used again once it answers.
func TestProbeBringsBackendBack(t *testing.T) {
	f := newTestFleet(t, func(c *config.Config) {
		c.Health.OpenFor = time.Millisecond
		c.Health.ProbeInterval = 5 * time.Millisecond
	})
	for _, c := range []struct {
		backend, path string
		requests      func(string) int64
	}{
		{"o", "/api/version", f.ollama.Requests},
		{"v", "/v1/models", f.oai.Requests},
	} {
		b, _ := f.Backend(c.backend)
		before := c.requests(c.path)
		b.Health.Failure(errors.New("down"), true)
		eventually(t, c.backend+" closes again", func() bool { return b.Health.State() == backend.Closed })
		if c.requests(c.path) <= before {
			t.Fatalf("%s: closed without a probe of %s", c.backend, c.path)
		}
	}
}

// eventually polls cond until it holds, failing the test after a deadline.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	tick := time.NewTicker(2 * time.Millisecond)
	defer tick.Stop()
	deadline := time.After(5 * time.Second)
	for !cond() {
		select {
		case <-tick.C:
		case <-deadline:
			t.Fatalf("timed out waiting until %s", what)
		}
	}
}
