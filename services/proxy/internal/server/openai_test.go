package server

import (
	"bytes"
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"sync"
	"testing"

	"github.com/ollama/ollama/api"
	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"
	"github.com/openai/openai-go/v3/shared"

	"github.com/droverhq/drover/pkg/config"
	"github.com/droverhq/drover/testkit/ollamatest"
	"github.com/droverhq/drover/testkit/openaitest"
)

func chatParams(model string) openai.ChatCompletionNewParams {
	return openai.ChatCompletionNewParams{
		Model:    model,
		Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage("hello there friend")},
	}
}

var weatherTool = openai.ChatCompletionFunctionTool(shared.FunctionDefinitionParam{
	Name: "get_weather",
	Parameters: shared.FunctionParameters{
		"type":       "object",
		"properties": map[string]any{"city": map[string]any{"type": "string"}, "days": map[string]any{"type": "integer"}},
		"required":   []string{"city"},
	},
})

// sdkSuite runs the OpenAI SDK against Drover for model and checks what it
// sees; prompt is the fake's prompt count for chatParams.
func sdkSuite(t *testing.T, e *mixedEnv, model string, prompt, reply int64, replyText string) {
	t.Helper()
	// Non-streamed.
	res, err := e.oa.Chat.Completions.New(ctx(t), chatParams(model))
	if err != nil {
		t.Fatal(err)
	}
	if res.Choices[0].Message.Content != replyText || res.Usage.PromptTokens != prompt || res.Usage.CompletionTokens != reply {
		t.Fatalf("non-stream: %q %+v", res.Choices[0].Message.Content, res.Usage)
	}

	// Streamed, without asking for usage: the client must not see any.
	stream := e.oa.Chat.Completions.NewStreaming(ctx(t), chatParams(model))
	var text strings.Builder
	chunks := 0
	for stream.Next() {
		c := stream.Current()
		chunks++
		if len(c.Choices) == 0 || c.JSON.Usage.Valid() {
			t.Fatalf("client got a usage chunk it did not ask for: %s", c.RawJSON())
		}
		text.WriteString(c.Choices[0].Delta.Content)
	}
	if err := stream.Err(); err != nil {
		t.Fatal(err)
	}
	if text.String() != replyText || chunks < 2 {
		t.Fatalf("stream: %d chunks, %q", chunks, text.String())
	}

	// Streamed, asking for usage: the client gets exactly one usage chunk.
	p := chatParams(model)
	p.StreamOptions = openai.ChatCompletionStreamOptionsParam{IncludeUsage: openai.Bool(true)}
	stream = e.oa.Chat.Completions.NewStreaming(ctx(t), p)
	var got openai.CompletionUsage
	usageChunks := 0
	for stream.Next() {
		if c := stream.Current(); len(c.Choices) == 0 {
			usageChunks++
			got = c.Usage
		}
	}
	if err := stream.Err(); err != nil {
		t.Fatal(err)
	}
	if usageChunks != 1 || got.PromptTokens != prompt || got.CompletionTokens != reply {
		t.Fatalf("stream with usage: %d usage chunks, %+v", usageChunks, got)
	}

	// Tools, whole and streamed.
	p = chatParams(model)
	p.Tools = []openai.ChatCompletionToolUnionParam{weatherTool}
	// ollamatest calls a tool only when told to; openaitest ignores the field.
	toolCall := option.WithJSONSet("fake", map[string]any{"tool_call": true})
	res, err = e.oa.Chat.Completions.New(ctx(t), p, toolCall)
	if err != nil {
		t.Fatal(err)
	}
	calls := res.Choices[0].Message.ToolCalls
	if len(calls) != 1 || calls[0].Function.Name != "get_weather" || !json.Valid([]byte(calls[0].Function.Arguments)) || res.Choices[0].FinishReason != "tool_calls" {
		t.Fatalf("tool call: %s", res.RawJSON())
	}
	stream = e.oa.Chat.Completions.NewStreaming(ctx(t), p, toolCall)
	acc := openai.ChatCompletionAccumulator{}
	var finished []openai.FinishedChatCompletionToolCall
	for stream.Next() {
		acc.AddChunk(stream.Current())
		if tc, ok := acc.JustFinishedToolCall(); ok {
			finished = append(finished, tc)
		}
	}
	if err := stream.Err(); err != nil {
		t.Fatal(err)
	}
	if len(acc.Choices) != 1 || len(acc.Choices[0].Message.ToolCalls) != 1 || acc.Choices[0].Message.ToolCalls[0].Function.Arguments != calls[0].Function.Arguments {
		t.Fatalf("streamed tool call: %+v (finished %v)", acc.Choices, finished)
	}

	// Errors in OpenAI's shape.
	_, err = e.oa.Chat.Completions.New(ctx(t), chatParams("no-such-model"))
	var apiErr *openai.Error
	if !errors.As(err, &apiErr) || apiErr.StatusCode != http.StatusNotFound || apiErr.Code != "model_not_found" || apiErr.Type != "invalid_request_error" {
		t.Fatalf("unknown model: %v", err)
	}
}

func TestOpenAISDKOverOpenAIBackends(t *testing.T) {
	for _, flavor := range []openaitest.Flavor{openaitest.VLLM, openaitest.LlamaCpp} {
		t.Run(string(flavor), func(t *testing.T) {
			e := newMixedEnv(t, 0, []openaitest.Config{{Flavor: flavor}, {Flavor: flavor, APIKey: "backend-secret"}}, nil)
			sdkSuite(t, e, "tiny", 3+openaitest.PerMessageTokens, openaitest.DefaultChunks, openaitest.ReplyText(openaitest.DefaultChunks))

			// Completions, streamed without usage.
			cs := e.oa.Completions.NewStreaming(ctx(t), openai.CompletionNewParams{Model: openai.CompletionNewParamsModel("tiny"), Prompt: openai.CompletionNewParamsPromptUnion{OfString: openai.String("one two three")}})
			var text strings.Builder
			for cs.Next() {
				c := cs.Current()
				if len(c.Choices) == 0 || c.JSON.Usage.Valid() {
					t.Fatalf("usage chunk reached the client: %s", c.RawJSON())
				}
				text.WriteString(c.Choices[0].Text)
			}
			if cs.Err() != nil || text.String() != openaitest.ReplyText(openaitest.DefaultChunks) {
				t.Fatalf("completions: %v %q", cs.Err(), text.String())
			}

			// Embeddings, many inputs.
			emb, err := e.oa.Embeddings.New(ctx(t), openai.EmbeddingNewParams{Model: "tiny-embed", Input: openai.EmbeddingNewParamsInputUnion{OfArrayOfStrings: []string{"a b", "c", "d e f"}}})
			if err != nil {
				t.Fatal(err)
			}
			if len(emb.Data) != 3 || len(emb.Data[2].Embedding) != 16 || emb.Usage.PromptTokens != 6+3*openaitest.PerMessageTokens {
				t.Fatalf("embeddings: %d vectors, usage %+v", len(emb.Data), emb.Usage)
			}

			// Models, merged.
			page, err := e.oa.Models.List(ctx(t))
			if err != nil {
				t.Fatal(err)
			}
			if len(page.Data) != len(openaitest.DefaultModels()) {
				t.Fatalf("models: %+v", page.Data)
			}
			e.checkTotals()
		})
	}
}

func TestOpenAISDKOverOllamaBackends(t *testing.T) {
	e := newMixedEnv(t, 2, nil, nil)
	if !ollamaServesV1(t, e.ollama[0]) {
		t.Skip("testkit/ollamatest does not serve Ollama's /v1 routes yet")
	}
	sdkSuite(t, e, "tiny2", 3+ollamatest.PerMessageTokens, ollamatest.DefaultChunks, ollamatest.ReplyText(ollamatest.DefaultChunks))
	e.checkTotals()
}

func TestOpenAIModelsMergedWithAliases(t *testing.T) {
	e := newMixedEnv(t, 1, []openaitest.Config{{Flavor: openaitest.LlamaCpp, Models: []openaitest.Model{{ID: "tiny", Status: "loaded"}, {ID: "big-oss", Status: "unloaded"}}}}, func(c *config.Config) {
		c.Aliases = map[string][]config.Alias{
			"gpt-oss:120b": {{Backend: "o0", Model: "tiny2"}, {Backend: "v0", Model: "big-oss"}},
			"nowhere":      {{Backend: "v0", Model: "absent"}},
			"pub-v":        {{Backend: "v0", Model: "big-oss"}},
			"pub-o":        {{Backend: "o0", Model: "tiny2"}},
		}
	})
	page, err := e.oa.Models.List(ctx(t))
	if err != nil {
		t.Fatal(err)
	}
	ids := map[string]int{}
	for _, m := range page.Data {
		ids[m.ID]++
	}
	for _, want := range []string{"tiny:latest", "tiny2:latest", "tiny-embed:latest", "big-oss", "gpt-oss:120b"} {
		if ids[want] != 1 {
			t.Fatalf("models %v: want one %s", ids, want)
		}
	}
	if ids["tiny"] != 0 || ids["nowhere"] != 0 {
		t.Fatalf("models %v: tiny is tiny:latest; an alias nothing serves is not listed", ids)
	}
	m, err := e.oa.Models.Get(ctx(t), "gpt-oss:120b")
	if err != nil || m.ID != "gpt-oss:120b" || m.OwnedBy != "drover" {
		t.Fatalf("get alias: %+v %v", m, err)
	}

	// Ollama clients see the alias and the OpenAI-type backend's models too.
	list, err := e.ol.List(ctx(t))
	if err != nil {
		t.Fatal(err)
	}
	names := map[string]bool{}
	for _, m := range list.Models {
		names[m.Name] = true
	}
	if !names["gpt-oss:120b"] || !names["big-oss"] || !names["tiny2:latest"] {
		t.Fatalf("/api/tags: %v", names)
	}

	// Usage goes under the public name and the backend's own, through
	// either API.
	if _, err := e.oa.Chat.Completions.New(ctx(t), chatParams("pub-v")); err != nil {
		t.Fatal(err)
	}
	if _, err := e.oa.Chat.Completions.New(ctx(t), chatParams("pub-o")); err != nil {
		t.Fatal(err)
	}
	noStream := false
	for _, model := range []string{"pub-v", "pub-o"} {
		if err := e.ol.Chat(ctx(t), &api.ChatRequest{Model: model, Messages: []api.Message{{Role: "user", Content: "x"}}, Stream: &noStream}, func(api.ChatResponse) error { return nil }); err != nil {
			t.Fatalf("%s: %v", model, err)
		}
	}
	waitFor(t, func() bool { return len(e.events.all()) == 4 })
	got := map[string]bool{}
	for _, ev := range e.events.all() {
		if ev.InputTokens == nil || ev.Status != 200 {
			t.Fatalf("event %+v", ev)
		}
		got[ev.Route+" "+ev.Model+" "+ev.Endpoint+" "+ev.BackendModel] = true
	}
	for _, want := range []string{
		"/v1/chat/completions pub-v v0 big-oss", "/v1/chat/completions pub-o o0 tiny2:latest",
		"/api/chat pub-v v0 big-oss", "/api/chat pub-o o0 tiny2:latest",
	} {
		if !got[want] {
			t.Fatalf("events %v lack %q", got, want)
		}
	}
}

func TestOpenAIPassesEveryFieldThrough(t *testing.T) {
	e := newMixedEnv(t, 0, []openaitest.Config{{}}, nil)
	body := `{"model":"tiny","messages":[{"role":"user","content":"hi"}],"tool_choice":"none","n":1,"parallel_tool_calls":false,"reasoning_effort":"low","logit_bias":{"50256":-100},"whatever_comes_next":{"x":[1,2]}}`
	status, _, _ := e.raw("/v1/chat/completions", body)
	if status != 200 {
		t.Fatalf("status %d", status)
	}
	if got := e.oai[0].LastBody("/v1/chat/completions"); string(got) != body {
		t.Fatalf("non-stream body changed:\n%s\n%s", got, body)
	}
	// A stream without include_usage gains it and keeps the rest.
	status, hdr, out := e.raw("/v1/chat/completions", strings.Replace(body, `"n":1`, `"n":1,"stream":true,"stream_options":{"continuous_usage_stats":false}`, 1))
	if status != 200 || !strings.HasPrefix(hdr.Get("Content-Type"), "text/event-stream") || !bytes.HasSuffix(out, []byte("data: [DONE]\n\n")) || bytes.Contains(out, []byte(`"usage"`)) {
		t.Fatalf("stream: %d %s", status, out)
	}
	var sent map[string]any
	json.Unmarshal(e.oai[0].LastBody("/v1/chat/completions"), &sent)
	opts, _ := sent["stream_options"].(map[string]any)
	if opts["include_usage"] != true || opts["continuous_usage_stats"] != false || sent["tool_choice"] != "none" || sent["reasoning_effort"] != "low" || sent["whatever_comes_next"] == nil {
		t.Fatalf("stream body sent: %v", sent)
	}
}

func TestOpenAIErrors(t *testing.T) {
	e := newMixedEnv(t, 1, []openaitest.Config{{}, {}}, nil)
	cases := []struct {
		name, path, body string
		status           int
		typ, code        string
	}{
		{"not json", "/v1/chat/completions", `nope`, 400, "invalid_request_error", ""},
		{"no model", "/v1/chat/completions", `{"messages":[]}`, 400, "invalid_request_error", ""},
		{"unknown model", "/v1/embeddings", `{"model":"nope","input":"x"}`, 404, "invalid_request_error", "model_not_found"},
		{"rerank on ollama only", "/v1/rerank", `{"model":"tiny2","query":"q","documents":["a"]}`, 501, "invalid_request_error", "not_implemented"},
		{"rerank unknown", "/v1/rerank", `{"model":"nope","query":"q","documents":["a"]}`, 404, "invalid_request_error", "model_not_found"},
		{"backend 4xx passes", "/v1/chat/completions", `{"model":"tiny-reason","messages":[],"fake":{"status":400,"error":"bad thing"}}`, 400, "invalid_request_error", ""},
		{"every backend 5xx", "/v1/chat/completions", `{"model":"tiny-reason","messages":[],"fake":{"status":500,"error":"engine dead"}}`, 500, "server_error", ""},
	}
	for _, c := range cases {
		status, hdr, body := e.raw(c.path, c.body)
		var doc struct {
			Error struct {
				Message string  `json:"message"`
				Type    string  `json:"type"`
				Param   *string `json:"param"`
				Code    any     `json:"code"`
			} `json:"error"`
		}
		if err := json.Unmarshal(body, &doc); err != nil || status != c.status || doc.Error.Type != c.typ || doc.Error.Message == "" || !strings.HasPrefix(hdr.Get("Content-Type"), "application/json") {
			t.Fatalf("%s: %d %s", c.name, status, body)
		}
		if code, _ := doc.Error.Code.(string); c.code != "" && code != c.code {
			t.Fatalf("%s: code %v", c.name, doc.Error.Code)
		}
	}
	if n := e.oai[0].Requests("/v1/chat/completions") + e.oai[1].Requests("/v1/chat/completions"); n != 3 {
		t.Fatalf("%d backend requests: want 1 for the 4xx, 2 for the 5xx (failover)", n)
	}

	// Rerank on a backend that offers it.
	status, _, body := e.raw("/v1/rerank", `{"model":"tiny-rerank","query":"which","documents":["one","two words","three"],"top_n":2}`)
	var rr struct {
		Results []struct {
			Index int `json:"index"`
		} `json:"results"`
	}
	if json.Unmarshal(body, &rr); status != 200 || len(rr.Results) != 2 {
		t.Fatalf("rerank: %d %s", status, body)
	}

	// A full queue is a 503 with Retry-After, in OpenAI's shape.
	e2 := newMixedEnv(t, 0, []openaitest.Config{{}}, func(c *config.Config) {
		c.Routing.MaxConcurrency = 1
		c.Routing.Queue.MaxLength = 1
	})
	done := make(chan struct{})
	for range 2 {
		go func() {
			defer func() { done <- struct{}{} }()
			e2.raw("/v1/chat/completions", `{"model":"tiny","messages":[],"fake":{"latency_ms":300}}`)
		}()
	}
	waitFor(t, func() bool { return e2.srv.Router.QueueLen() == 1 })
	status, hdr, body := e2.raw("/v1/chat/completions", `{"model":"tiny","messages":[]}`)
	if status != 503 || hdr.Get("Retry-After") == "" || !bytes.Contains(body, []byte(`"server_error"`)) {
		t.Fatalf("queue full: %d %v %s", status, hdr, body)
	}
	<-done
	<-done
}

func TestOpenAIUnknownUsageIsNotZero(t *testing.T) {
	e := newMixedEnv(t, 0, []openaitest.Config{{NoUsage: true}}, nil)
	for _, stream := range []bool{false, true} {
		if stream {
			s := e.oa.Chat.Completions.NewStreaming(ctx(t), chatParams("tiny"))
			for s.Next() {
			}
			if s.Err() != nil {
				t.Fatal(s.Err())
			}
		} else if _, err := e.oa.Chat.Completions.New(ctx(t), chatParams("tiny")); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, func() bool { return len(e.events.all()) == 2 })
	for _, ev := range e.events.all() {
		if ev.InputTokens != nil || ev.OutputTokens != nil || ev.Error {
			t.Fatalf("event with unreported usage: %+v", ev)
		}
	}
	if !strings.Contains(metricsText(t, e.url), `drover_usage_unknown_total{backend="v0",route="/v1/chat/completions"} 2`) {
		t.Fatal("unknown usage not counted in metrics")
	}
}

func TestOpenAIStreamTokensWithoutUsageFallBackToTimings(t *testing.T) {
	// llama.cpp reports timings even when the client asked for no usage;
	// a backend that honours include_usage reports both, and usage wins.
	e := newMixedEnv(t, 0, []openaitest.Config{{Flavor: openaitest.LlamaCpp}}, nil)
	status, _, body := e.raw("/v1/chat/completions", `{"model":"tiny","messages":[{"role":"user","content":"a b"}],"stream":true}`)
	if status != 200 || bytes.Contains(body, []byte(`"usage"`)) || !bytes.Contains(body, []byte(`"timings"`)) {
		t.Fatalf("%d %s", status, body)
	}
	e.checkTotals()
}

// Both APIs over both backend kinds at once: what Drover recorded equals
// what the backends produced, token for token, and clients that did not
// ask for usage never saw it.
func TestTokenTotalsExactAcrossAPIsAndBackendKinds(t *testing.T) {
	e := newMixedEnv(t, 2, []openaitest.Config{{Flavor: openaitest.VLLM}, {Flavor: openaitest.LlamaCpp}}, nil)
	if !ollamaServesV1(t, e.ollama[0]) {
		t.Skip("testkit/ollamatest does not serve Ollama's /v1 routes yet")
	}
	reqs := []struct{ path, body string }{
		{"/api/chat", `{"model":"tiny","messages":[{"role":"user","content":"a b c"}]}`},
		{"/api/chat", `{"model":"tiny","messages":[{"role":"user","content":"a b c"}],"stream":false}`},
		{"/api/generate", `{"model":"tiny","prompt":"x y","options":{"num_predict":3}}`},
		{"/api/embed", `{"model":"tiny-embed","input":["a","b c"]}`},
		{"/v1/chat/completions", `{"model":"tiny","messages":[{"role":"user","content":"a b"}],"stream":true}`},
		{"/v1/chat/completions", `{"model":"tiny","messages":[{"role":"user","content":"a b"}],"stream":true,"stream_options":{"include_usage":true}}`},
		{"/v1/chat/completions", `{"model":"tiny","messages":[{"role":"user","content":"a b"}],"max_tokens":4}`},
		{"/v1/completions", `{"model":"tiny","prompt":"p q r","stream":true}`},
		{"/v1/embeddings", `{"model":"tiny-embed","input":["a b","c"]}`},
	}
	var wg sync.WaitGroup
	errs := make(chan string, 1000)
	for range 6 {
		for _, r := range reqs {
			wg.Go(func() {
				status, _, body := e.raw(r.path, r.body)
				switch {
				case status != 200:
					errs <- r.path + ": " + string(body)
				case strings.Contains(r.body, `"stream":true`) && !strings.Contains(r.body, "include_usage") && bytes.Contains(body, []byte(`"usage"`)):
					errs <- r.path + ": usage reached a client that did not ask: " + string(body)
				case strings.HasPrefix(r.path, "/v1/") && strings.Contains(r.body, `"stream":true`) && !bytes.HasSuffix(body, []byte("data: [DONE]\n\n")):
					errs <- r.path + ": stream did not end with [DONE]: " + string(body)
				}
			})
		}
	}
	wg.Wait()
	close(errs)
	for msg := range errs {
		t.Error(msg)
	}
	e.checkTotals()
	perBackend := map[string]int{}
	for _, ev := range e.events.all() {
		if ev.InputTokens == nil || ev.OutputTokens == nil || ev.Error {
			t.Fatalf("event %+v", ev)
		}
		perBackend[ev.Endpoint]++
	}
	if len(perBackend) != 4 {
		t.Fatalf("requests by backend: %v", perBackend)
	}
}
