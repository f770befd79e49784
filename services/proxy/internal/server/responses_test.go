package server

import (
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/responses"

	"github.com/droverhq/drover/pkg/usage"
	"github.com/droverhq/drover/testkit/ollamatest"
)

// The OpenAI SDK's Responses API through Drover in front of Ollama
// backends: what the SDK reads is what the backend reported, and so is what
// Drover records, streamed and not.
func TestResponsesSDKOverOllamaBackends(t *testing.T) {
	e := newMixedEnv(t, 2, nil, nil)
	params := responses.ResponseNewParams{Model: "tiny2", Input: responses.ResponseNewParamsInputUnion{OfString: openai.String("hello there friend")}}

	res, err := e.oa.Responses.New(ctx(t), params)
	if err != nil {
		t.Fatal(err)
	}
	if res.OutputText() != ollamatest.ReplyText(ollamatest.DefaultChunks) || res.Usage.OutputTokens != ollamatest.DefaultChunks || res.Usage.InputTokens == 0 {
		t.Fatalf("non-stream: %q %+v", res.OutputText(), res.Usage)
	}
	ev := e.lastEvent(t, "/v1/responses")
	if ev.InputTokens == nil || *ev.InputTokens != res.Usage.InputTokens || ev.OutputTokens == nil || *ev.OutputTokens != res.Usage.OutputTokens {
		t.Fatalf("recorded %v/%v, the SDK read %d/%d", ev.InputTokens, ev.OutputTokens, res.Usage.InputTokens, res.Usage.OutputTokens)
	}

	stream := e.oa.Responses.NewStreaming(ctx(t), params)
	var types []string
	var text strings.Builder
	var final responses.ResponseUsage
	for stream.Next() {
		ev := stream.Current()
		types = append(types, ev.Type)
		switch ev.Type {
		case "response.output_text.delta":
			text.WriteString(ev.Delta)
		case "response.completed":
			final = ev.Response.Usage
		}
	}
	if err := stream.Err(); err != nil {
		t.Fatal(err)
	}
	if len(types) < 2 || types[0] != "response.created" || types[len(types)-1] != "response.completed" {
		t.Fatalf("events %v", types)
	}
	if text.String() != ollamatest.ReplyText(ollamatest.DefaultChunks) || final.OutputTokens != ollamatest.DefaultChunks {
		t.Fatalf("stream: %q %+v", text.String(), final)
	}
	e.checkTotals()
}

// Images are passed through by model; an unknown model is OpenAI's 404; a
// wrong method is gin's 405 with Allow.
func TestImagesAndResponsesWire(t *testing.T) {
	e := newMixedEnv(t, 1, nil, nil)
	cases := []struct {
		method, path, body string
		status             int
		ctype, allow, want string
	}{
		{"POST", "/v1/images/generations", `{"model":"tiny","prompt":"a cat"}`, 200, "application/x-ndjson", "", ""},
		{"POST", "/v1/images/edits", `{"model":"tiny","prompt":"a cat","image":"data:image/png;base64,AA=="}`, 200, "application/x-ndjson", "", ""},
		{"POST", "/v1/images/edits", `{"model":"tiny","prompt":"a cat"}`, 400, "application/json; charset=utf-8", "",
			`{"error":{"message":"image is required","type":"invalid_request_error","param":null,"code":null}}`},
		{"POST", "/v1/responses", `{"model":"tiny-embed","input":"x"}`, 400, "application/json", "",
			`{"error":{"message":"\"tiny-embed\" does not support chat","type":"api_error","param":null,"code":null}}` + "\n"},
		{"POST", "/v1/responses", `{"model":"nope","input":"x"}`, 404, "application/json", "",
			`{"error":{"message":"model 'nope' not found","type":"api_error","param":null,"code":null}}` + "\n"},
		{"GET", "/v1/responses", "", 405, "text/plain", "POST", "405 method not allowed"},
		{"GET", "/v1/images/edits", "", 405, "text/plain", "POST", "405 method not allowed"},
	}
	for _, c := range cases {
		req, _ := http.NewRequestWithContext(t.Context(), c.method, e.url+c.path, strings.NewReader(c.body))
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != c.status || resp.Header.Get("Content-Type") != c.ctype || resp.Header.Get("Allow") != c.allow || string(body) != c.want {
			t.Errorf("%s %s: got %d %q Allow %q %q, want %d %q %q %q", c.method, c.path, resp.StatusCode, resp.Header.Get("Content-Type"),
				resp.Header.Get("Allow"), body, c.status, c.ctype, c.allow, c.want)
		}
	}
}

// lastEvent waits for the usage event of a request to route and returns the
// last one recorded.
func (e *mixedEnv) lastEvent(t *testing.T, route string) usage.Event {
	t.Helper()
	var last usage.Event
	waitFor(t, func() bool {
		for _, ev := range e.events.all() {
			if ev.Route == route {
				last = ev
			}
		}
		return last.Route == route
	})
	return last
}
