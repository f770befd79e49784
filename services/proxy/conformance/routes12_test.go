package conformance

import (
	"errors"
	"strings"
	"testing"

	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"
	"github.com/openai/openai-go/v3/responses"

	"github.com/droverhq/drover/testkit/ollamatest"
)

// Issue 12's routes: OpenAI's Responses and images APIs, /api/status,
// Ollama's server-side aliases, and wrong methods (405 with Allow), real
// Ollama directly against Drover in front of it, and against the fake.
// Responses carry random ids and clock values and sampled text, so their
// bodies are compared by shape and the values that do not depend on
// sampling (status, model, errors), and the usage of tiny-fixed, which
// never stops early, exactly.

type route12Case struct {
	name, method, path, body string
	usage                    bool // tiny-fixed: the usage must match too
}

const respAsk = `"input":"hello there"`

var routes12Cases = []route12Case{
	// Wrong methods: gin's 405 with the path's methods.
	{name: "responses by GET", method: "GET", path: "/v1/responses"},
	{name: "images by GET", method: "GET", path: "/v1/images/generations"},
	{name: "status by POST", method: "POST", path: "/api/status", body: `{}`},
	{name: "aliases by PUT", method: "PUT", path: "/api/experimental/aliases", body: `{}`},
	{name: "tags by PATCH", method: "PATCH", path: "/api/tags"},
	{name: "blob by GET", method: "GET", path: "/api/blobs/sha256:abc"},
	{name: "root by POST", method: "POST", path: "/"},
	{name: "delete by POST", method: "POST", path: "/api/delete", body: `{"model":"x"}`},

	{name: "status", method: "GET", path: "/api/status"},

	// Responses.
	{name: "response", method: "POST", path: "/v1/responses", body: `{"model":"tiny-fixed",` + respAsk + `,"max_output_tokens":3}`, usage: true},
	{name: "response stream", method: "POST", path: "/v1/responses", body: `{"model":"tiny-fixed",` + respAsk + `,"max_output_tokens":3,"stream":true}`, usage: true},
	{name: "response items and instructions", method: "POST", path: "/v1/responses", body: `{"model":"tiny-fixed","instructions":"be brief","input":[{"role":"user","content":"hello"}],"max_output_tokens":2,"temperature":0.5}`, usage: true},
	{name: "response unknown model", method: "POST", path: "/v1/responses", body: `{"model":"nope",` + respAsk + `}`},
	{name: "response unknown model streamed", method: "POST", path: "/v1/responses", body: `{"model":"nope",` + respAsk + `,"stream":true}`},
	{name: "response on embedding model", method: "POST", path: "/v1/responses", body: `{"model":"tiny-embed",` + respAsk + `}`},

	// Images: the tiny models make none; what Ollama answers is the answer.
	{name: "image", method: "POST", path: "/v1/images/generations", body: `{"model":"tiny","prompt":"a cat"}`},
	{name: "image unknown model", method: "POST", path: "/v1/images/generations", body: `{"model":"nope","prompt":"a cat"}`},
	{name: "image edit", method: "POST", path: "/v1/images/edits", body: `{"model":"tiny","prompt":"a cat","image":"data:image/png;base64,iVBORw0KGgo="}`},
	{name: "image edit without image", method: "POST", path: "/v1/images/edits", body: `{"model":"tiny","prompt":"a cat"}`},

	// Server-side aliases, in order: created, listed, deleted.
	{name: "alias create", method: "POST", path: "/api/experimental/aliases", body: `{"alias":"{side}-a","target":"tiny"}`},
	{name: "alias list", method: "GET", path: "/api/experimental/aliases"},
	{name: "alias conflict", method: "POST", path: "/api/experimental/aliases", body: `{"alias":"tiny2","target":"tiny"}`},
	{name: "alias to itself", method: "POST", path: "/api/experimental/aliases", body: `{"alias":"tiny","target":"tiny:latest"}`},
	{name: "alias without target", method: "POST", path: "/api/experimental/aliases", body: `{"alias":"x"}`},
	{name: "alias delete", method: "DELETE", path: "/api/experimental/aliases", body: `{"alias":"{side}-a"}`},
	{name: "alias delete again", method: "DELETE", path: "/api/experimental/aliases", body: `{"alias":"{side}-a"}`},
	{name: "alias list after", method: "GET", path: "/api/experimental/aliases"},
}

// TestRoutes12Conformance runs every case directly against server A, then
// every case through Drover over A and B (the alias cases depend on their
// order), and compares the answers.
func TestRoutes12Conformance(t *testing.T) {
	need(t)
	d := newDrover(t, nil)
	direct := runRoutes12(t, srvA.url, sideDirect)
	via := runRoutes12(t, d.url, sideDrover)
	for i, c := range routes12Cases {
		for _, diff := range compareRoute12(c, direct[i], via[i], c.usage) {
			t.Errorf("%s (%s %s %s): %s", c.name, c.method, c.path, c.body, diff)
		}
	}
}

// TestRoutes12FakeMatchesOllama keeps testkit/ollamatest honest on these
// routes; its counts follow its own rule.
func TestRoutes12FakeMatchesOllama(t *testing.T) {
	need(t)
	fake := ollamatest.New(ollamatest.Config{})
	if err := fake.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(fake.Close)
	direct := runRoutes12(t, srvA.url, sideDirect)
	faked := runRoutes12(t, fake.URL(), sideDrover)
	for i, c := range routes12Cases {
		for _, diff := range compareRoute12(c, direct[i], faked[i], false) {
			t.Errorf("%s (%s %s %s): %s", c.name, c.method, c.path, c.body, strings.ReplaceAll(diff, "through Drover", "from the fake"))
		}
	}
}

func runRoutes12(t *testing.T, base, side string) []reply {
	out := make([]reply, len(routes12Cases))
	for i, c := range routes12Cases {
		out[i] = send(t, c.method, base+c.path, strings.ReplaceAll(c.body, "{side}", side))
		out[i].body = []byte(strings.ReplaceAll(string(out[i].body), side, "{side}"))
	}
	return out
}

// respUsage is what a Response's usage must agree on when counts are exact.
var respUsage = []string{"input_tokens", "output_tokens", "total_tokens"}

func compareRoute12(c route12Case, direct, via reply, usage bool) []string {
	d := &differ{route: c.method + " " + c.path, allow: allowedDifferences, shapesOnly: true}
	if direct.status == via.status {
		if a, b := direct.header.Get("Allow"), via.header.Get("Allow"); a != b {
			d.errorf("Allow %q directly, %q through Drover", a, b)
		}
	}
	if direct.header.Get("Content-Type") != "text/event-stream" || direct.status != via.status {
		d.replies(direct, via)
		if usage && direct.status == 200 {
			x, _ := decode(direct.body)
			y, _ := decode(via.body)
			compareUsage(d, "usage", x, y)
		}
		return d.diffs
	}
	if a, b := direct.header.Get("Content-Type"), via.header.Get("Content-Type"); a != b {
		d.errorf("Content-Type %q directly, %q through Drover", a, b)
	}
	dn, dd, err1 := messageEvents(direct.body)
	vn, vd, err2 := messageEvents(via.body)
	if err1 != nil || err2 != nil {
		d.errorf("events: %v / %v", err1, err2)
		return d.diffs
	}
	if a, b := foldRuns(dn), foldRuns(vn); a != b {
		d.errorf("events %s directly, %s through Drover", a, b)
		return d.diffs
	}
	first := map[string]any{}
	for i, n := range dn {
		if _, ok := first[n]; !ok {
			first[n] = dd[i]
		}
	}
	for i, n := range vn {
		d.value(n, first[n], vd[i])
	}
	if usage {
		compareUsage(d, "response.completed", dd[len(dd)-1], vd[len(vd)-1])
	}
	return d.diffs
}

// compareUsage compares the usage counts of two Responses (or events
// carrying one under "response").
func compareUsage(d *differ, where string, direct, via any) {
	get := func(v any) map[string]any {
		m, _ := v.(map[string]any)
		if r, ok := m["response"].(map[string]any); ok {
			m = r
		}
		u, _ := m["usage"].(map[string]any)
		return u
	}
	a, b := get(direct), get(via)
	for _, k := range respUsage {
		if a[k] == nil || a[k] != b[k] {
			d.errorf("%s usage.%s: %v directly, %v through Drover", where, k, a[k], b[k])
		}
	}
}

// TestResponsesOpenAISDK: the OpenAI Go SDK's Responses API through Drover
// in front of the real servers, a Response and streams, and Drover's counts
// equal to the usage the SDK read.
func TestResponsesOpenAISDK(t *testing.T) {
	need(t)
	d := newDrover(t, nil)
	client := openai.NewClient(option.WithBaseURL(d.url+"/v1/"), option.WithAPIKey("unused"), option.WithMaxRetries(0))
	params := func(model string, n int64) responses.ResponseNewParams {
		return responses.ResponseNewParams{Model: model, MaxOutputTokens: openai.Int(n),
			Input: responses.ResponseNewParamsInputUnion{OfString: openai.String("hello there")}}
	}
	res, err := client.Responses.New(t.Context(), params("tiny-fixed", 4))
	if err != nil {
		t.Fatal(err)
	}
	if res.Status != "completed" || res.Usage.OutputTokens != 4 || res.Usage.InputTokens == 0 || res.OutputText() == "" {
		t.Fatalf("response: %s", res.RawJSON())
	}
	in, out := res.Usage.InputTokens, res.Usage.OutputTokens
	for _, model := range []string{"tiny-fixed", "tiny", "tiny2"} {
		stream := client.Responses.NewStreaming(t.Context(), params(model, 6))
		var usage *responses.ResponseUsage
		for stream.Next() {
			if ev := stream.Current(); ev.Type == "response.completed" {
				u := ev.Response.Usage
				usage = &u
			}
		}
		if err := stream.Err(); err != nil {
			t.Fatalf("%s: %v", model, err)
		}
		if usage == nil || usage.OutputTokens > 6 || (model == "tiny-fixed" && usage.OutputTokens != 6) {
			t.Fatalf("%s stream: usage %+v", model, usage)
		}
		in, out = in+usage.InputTokens, out+usage.OutputTokens
	}
	var gotIn, gotOut int64
	waitUntil(t, "Drover's counts equal the SDK's", func() bool {
		gotIn, gotOut = 0, 0
		for _, models := range d.srv.Totals.Snapshot() {
			for _, c := range models {
				gotIn, gotOut = gotIn+c.InputTokens, gotOut+c.OutputTokens
			}
		}
		return gotIn == in && gotOut == out
	})
	_, err = client.Responses.New(t.Context(), params("nope", 4))
	var apiErr *openai.Error
	if !errors.As(err, &apiErr) || apiErr.StatusCode != 404 {
		t.Fatalf("unknown model: %v", err)
	}
}
