package ollamatest

import (
	"bufio"
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

type env struct {
	t      *testing.T
	s      *Server
	client *http.Client
}

func start(t *testing.T, cfg Config) *env {
	t.Helper()
	s := New(cfg)
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	tr := &http.Transport{}
	t.Cleanup(func() {
		tr.CloseIdleConnections()
		s.Close()
	})
	return &env{t: t, s: s, client: &http.Client{Transport: tr}}
}

type reply struct {
	status int
	ctype  string
	body   []byte
	err    error // a read error (cut connection)
}

func (e *env) do(method, path, body string) reply {
	e.t.Helper()
	req, err := http.NewRequest(method, e.s.URL()+path, strings.NewReader(body))
	if err != nil {
		e.t.Fatal(err)
	}
	resp, err := e.client.Do(req)
	if err != nil {
		return reply{err: err}
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return reply{status: resp.StatusCode, ctype: resp.Header.Get("Content-Type"), body: b, err: err}
}

func (e *env) post(path, body string) reply { return e.do(http.MethodPost, path, body) }

// lines decodes an NDJSON body.
func lines(t *testing.T, b []byte) []map[string]any {
	t.Helper()
	var out []map[string]any
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		var m map[string]any
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			t.Fatalf("line %q: %v", sc.Text(), err)
		}
		out = append(out, m)
	}
	return out
}

func obj(t *testing.T, b []byte) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatalf("body %q: %v", b, err)
	}
	return m
}

func TestSimpleRoutes(t *testing.T) {
	e := start(t, Config{Version: "9.9.9"})
	cases := []struct {
		method, path string
		status       int
		ctype, body  string
	}{
		{"GET", "/", 200, "text/plain; charset=utf-8", "Ollama is running"},
		{"HEAD", "/", 200, "text/plain; charset=utf-8", ""},
		{"GET", "/api/version", 200, "application/json; charset=utf-8", `{"version":"9.9.9"}`},
		{"GET", "/api/nope", 404, "text/plain", "404 page not found"},
		{"GET", "/api/chat", 405, "text/plain", "405 method not allowed"},
		{"GET", "/api/ps", 200, "application/json; charset=utf-8", `{"models":[]}`},
	}
	for _, c := range cases {
		r := e.do(c.method, c.path, "")
		if r.status != c.status || r.ctype != c.ctype || string(r.body) != c.body {
			t.Errorf("%s %s = %d %q %q, want %d %q %q", c.method, c.path, r.status, r.ctype, r.body, c.status, c.ctype, c.body)
		}
	}
	if n := e.s.Requests("/api/version"); n != 1 {
		t.Errorf("Requests(/api/version) = %d, want 1", n)
	}
	if n := e.s.Requests("/"); n != 2 {
		t.Errorf("Requests(/) = %d, want 2", n)
	}
}

func TestTagsAndNames(t *testing.T) {
	e := start(t, Config{Models: []Model{{Name: "tiny"}, {Name: "Org/Big:7b"}}})
	var tags struct {
		Models []struct{ Name, Model, Digest string } `json:"models"`
	}
	if err := json.Unmarshal(e.do("GET", "/api/tags", "").body, &tags); err != nil {
		t.Fatal(err)
	}
	// Newest first; names keep their case, like Ollama's manifests.
	if len(tags.Models) != 2 || tags.Models[0].Name != "Org/Big:7b" || tags.Models[1].Name != "tiny:latest" {
		t.Fatalf("tags = %+v", tags.Models)
	}
	for _, name := range []string{"tiny", "tiny:latest", "TINY", "registry.ollama.ai/library/tiny:latest", "org/big:7b"} {
		if r := e.post("/api/show", `{"model":"`+name+`"}`); r.status != 200 {
			t.Errorf("show %s = %d %s", name, r.status, r.body)
		}
	}
	if r := e.post("/api/show", `{"model":"tiny:other"}`); r.status != 404 || string(r.body) != `{"error":"model 'tiny:other' not found"}` {
		t.Errorf("show tiny:other = %d %s", r.status, r.body)
	}
}

func TestDownUp(t *testing.T) {
	e := start(t, Config{})
	url := e.s.URL()
	e.s.Down()
	if r := e.do("GET", "/", ""); r.err == nil {
		t.Fatalf("server down but GET / = %d", r.status)
	}
	if err := e.s.Up(); err != nil {
		t.Fatal(err)
	}
	if e.s.URL() != url {
		t.Fatalf("URL changed: %s -> %s", url, e.s.URL())
	}
	if r := e.do("GET", "/", ""); r.status != 200 {
		t.Fatalf("after Up: %+v", r)
	}
}
