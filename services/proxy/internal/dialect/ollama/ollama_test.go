package ollama

import (
	"strings"
	"testing"

	"github.com/droverhq/drover/services/proxy/internal/dialect"
	"github.com/droverhq/drover/services/proxy/internal/meter"
)

func TestTokens(t *testing.T) {
	cases := []struct {
		route, body string
		known       bool
		in, out     int64
	}{
		{"/api/chat", `{"message":{"content":"x"},"done":true,"prompt_eval_count":5,"eval_count":7}`, true, 5, 7},
		{"/api/generate", `{"response":"","done":true}`, true, 0, 0}, // Ollama omits zero counts
		{"/api/chat", `{"message":{"content":"x"},"done":false}`, false, 0, 0},
		{"/api/embed", `{"embeddings":[[0.1]],"prompt_eval_count":3}`, true, 3, 0},
	}
	d := Dialect{}
	for _, c := range cases {
		x, err := d.Exchange(dialect.Call{Route: c.route, Body: []byte(`{"model":"m"}`), Model: "m", Target: "m"})
		if err != nil || x.Tokens == nil {
			t.Fatalf("%s: no token reader (%v)", c.route, err)
		}
		var m meter.Meter
		m.Write([]byte(c.body)) //nolint:errcheck
		in, out := x.Tokens(&m)
		if (in != nil) != c.known || (c.known && (*in != c.in || *out != c.out)) {
			t.Errorf("%s %s: got %v %v", c.route, c.body, in, out)
		}
	}
	// The legacy /api/embeddings reports no input count, and no output.
	x, _ := d.Exchange(dialect.Call{Route: "/api/embeddings", Body: []byte(`{}`), Model: "m", Target: "m"})
	var m meter.Meter
	m.Write([]byte(`{"embedding":[0.1]}`)) //nolint:errcheck
	if in, out := x.Tokens(&m); in != nil || out == nil || *out != 0 {
		t.Errorf("/api/embeddings: got %v %v", in, out)
	}
}

func TestExchange(t *testing.T) {
	d := Dialect{}
	body := []byte(`{"model":"pub","messages":[],"stream":true}`)
	x, err := d.Exchange(dialect.Call{Route: "/api/chat", Body: body, Model: "pub", Target: "pub:latest", Stream: true})
	if err != nil || x.Path != "/api/chat" || &x.Body[0] != &body[0] || x.Transform != nil {
		t.Fatalf("same model: %s %s %v", x.Path, x.Body, err)
	}
	x, err = d.Exchange(dialect.Call{Route: "/api/chat", Body: body, Model: "pub", Target: "tiny", Stream: true})
	if err != nil || !strings.Contains(string(x.Body), `"model":"tiny"`) {
		t.Fatalf("renamed: %s %v", x.Body, err)
	}
	// Ollama's /v1 routes are OpenAI's: a stream asks for usage.
	x, err = d.Exchange(dialect.Call{Route: "/v1/chat/completions", Body: body, Model: "pub", Target: "pub", Stream: true})
	if err != nil || !strings.Contains(string(x.Body), `"include_usage":true`) || x.Transform == nil || x.Complete == nil {
		t.Fatalf("/v1 stream: %s %v", x.Body, err)
	}
}

func TestServes(t *testing.T) {
	d := Dialect{}
	for _, r := range []string{"/api/chat", "/api/pull", "/api/blobs", "/v1/chat/completions", "/v1/models", dialect.Load, dialect.Relay} {
		if !d.Serves(r) {
			t.Errorf("does not serve %s", r)
		}
	}
	for _, r := range []string{"/v1/rerank", "/api/nope", ""} {
		if d.Serves(r) {
			t.Errorf("serves %s", r)
		}
	}
}

func TestListings(t *testing.T) {
	d := Dialect{}
	if d.Models().Path != "/api/tags" || d.Loaded().Path != "/api/ps" || d.ProbePath() != "/api/version" {
		t.Fatal("wrong discovery paths")
	}
	models, err := d.Loaded().Decode([]byte(`{"models":[{"model":"a:latest","expires_at":"2030-01-01T00:00:00Z","modified_at":"2024-01-02T03:04:05Z"},{"name":"library/b"}]}`))
	if err != nil || len(models) != 2 || models[0].Name != "a:latest" || models[0].ExpiresAt.Year() != 2030 || models[1].Name != "library/b" {
		t.Fatalf("decoded %+v %v", models, err)
	}
	if got := string(d.OpenAIEntry(models[0])); got != `{"id":"a:latest","object":"model","created":1704164645,"owned_by":"library"}` {
		t.Errorf("OpenAI entry %s", got)
	}
	if got := string(d.OpenAIEntry(models[1])); !strings.Contains(got, `"owned_by":"library"`) {
		t.Errorf("OpenAI entry %s", got)
	}
	if _, err := d.Models().Decode([]byte(`{"models":[1]}`)); err == nil {
		t.Error("a malformed list decoded")
	}
}
