package server

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"github.com/ollama/ollama/api"

	"github.com/droverhq/drover/testkit/openaitest"
)

// The official Ollama client against OpenAI-type backends only: every
// request is translated both ways.
func TestOllamaClientOverOpenAIBackend(t *testing.T) {
	for _, flavor := range []openaitest.Flavor{openaitest.VLLM, openaitest.LlamaCpp} {
		t.Run(string(flavor), func(t *testing.T) {
			e := newMixedEnv(t, 0, []openaitest.Config{{Flavor: flavor}}, nil)
			msgs := []api.Message{{Role: "system", Content: "be brief"}, {Role: "user", Content: "hello there friend"}}
			wantPrompt := 2 + 3 + 2*openaitest.PerMessageTokens
			for _, stream := range []bool{true, false} {
				var text strings.Builder
				var final api.ChatResponse
				chunks := 0
				err := e.ol.Chat(ctx(t), &api.ChatRequest{Model: "tiny", Messages: msgs, Stream: &stream}, func(r api.ChatResponse) error {
					chunks++
					text.WriteString(r.Message.Content)
					final = r
					return nil
				})
				if err != nil {
					t.Fatalf("chat stream=%v: %v", stream, err)
				}
				if !final.Done || final.DoneReason != "stop" || final.PromptEvalCount != wantPrompt || final.EvalCount != openaitest.DefaultChunks || final.Model != "tiny" {
					t.Fatalf("chat stream=%v final %+v", stream, final)
				}
				if text.String() != openaitest.ReplyText(openaitest.DefaultChunks) {
					t.Fatalf("chat stream=%v text %q", stream, text.String())
				}
				if want := map[bool]int{true: openaitest.DefaultChunks + 1, false: 1}[stream]; chunks != want {
					t.Fatalf("chat stream=%v: %d responses, want %d", stream, chunks, want)
				}

				// Generate with options: num_predict is max_tokens.
				text.Reset()
				var gfinal api.GenerateResponse
				err = e.ol.Generate(ctx(t), &api.GenerateRequest{Model: "tiny", Prompt: "one two", System: "sys", Stream: &stream,
					Options: map[string]any{"num_predict": 5, "temperature": 0.5, "top_p": 0.9, "seed": 7, "stop": []string{"x"}, "frequency_penalty": 0.1, "presence_penalty": 0.2}},
					func(r api.GenerateResponse) error {
						text.WriteString(r.Response)
						gfinal = r
						return nil
					})
				if err != nil {
					t.Fatalf("generate stream=%v: %v", stream, err)
				}
				if gfinal.EvalCount != 5 || gfinal.DoneReason != "length" || text.String() != openaitest.ReplyText(5) || gfinal.PromptEvalCount != 3+2*openaitest.PerMessageTokens {
					t.Fatalf("generate stream=%v: %q %+v", stream, text.String(), gfinal)
				}
				var sent map[string]any
				json.Unmarshal(e.oai[0].LastBody("/v1/chat/completions"), &sent)
				if sent["max_tokens"] != 5.0 || sent["temperature"] != 0.5 || sent["top_p"] != 0.9 || sent["seed"] != 7.0 || sent["frequency_penalty"] != 0.1 || sent["presence_penalty"] != 0.2 || sent["stream"] != stream {
					t.Fatalf("generate sent %v", sent)
				}
			}

			// Raw generate is a plain completion.
			raw := false
			var gr api.GenerateResponse
			if err := e.ol.Generate(ctx(t), &api.GenerateRequest{Model: "tiny", Prompt: "<s>x", Raw: true, Stream: &raw}, func(r api.GenerateResponse) error { gr = r; return nil }); err != nil {
				t.Fatal(err)
			}
			if gr.Response != openaitest.ReplyText(openaitest.DefaultChunks) || e.oai[0].Requests("/v1/completions") != 1 {
				t.Fatalf("raw generate: %+v", gr)
			}

			// Embed with many inputs returns every vector, in order.
			emb, err := e.ol.Embed(ctx(t), &api.EmbedRequest{Model: "tiny-embed", Input: []string{"a b", "c", "d e f"}})
			if err != nil {
				t.Fatal(err)
			}
			if len(emb.Embeddings) != 3 || emb.PromptEvalCount != 6+3*openaitest.PerMessageTokens || emb.Embeddings[1][0] != openaitest.Embedding("c", 16)[0] {
				t.Fatalf("embed: %d vectors, %d tokens", len(emb.Embeddings), emb.PromptEvalCount)
			}
			legacy, err := e.ol.Embeddings(ctx(t), &api.EmbeddingRequest{Model: "tiny-embed", Prompt: "one"})
			if err != nil || len(legacy.Embedding) != 16 {
				t.Fatalf("embeddings: %v %d", err, len(legacy.Embedding))
			}
			e.checkTotals()
		})
	}
}

func TestOllamaClientToolsThinkingFormatImagesOverOpenAIBackend(t *testing.T) {
	e := newMixedEnv(t, 0, []openaitest.Config{{}}, nil)
	var tool api.Tool
	if err := json.Unmarshal([]byte(`{"type":"function","function":{"name":"get_weather","description":"d","parameters":{"type":"object","required":["city"],"properties":{"city":{"type":"string"},"days":{"type":"integer"}}}}}`), &tool); err != nil {
		t.Fatal(err)
	}
	for _, stream := range []bool{true, false} {
		var calls []api.ToolCall
		var final api.ChatResponse
		err := e.ol.Chat(ctx(t), &api.ChatRequest{Model: "tiny", Messages: []api.Message{{Role: "user", Content: "weather?"}}, Tools: api.Tools{tool}, Stream: &stream}, func(r api.ChatResponse) error {
			calls = append(calls, r.Message.ToolCalls...)
			final = r
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		if len(calls) != 1 || calls[0].Function.Name != "get_weather" || final.EvalCount != openaitest.ToolCallTokens || !final.Done {
			t.Fatalf("stream=%v tool calls %+v final %+v", stream, calls, final)
		}
		city, _ := calls[0].Function.Arguments.Get("city")
		days, _ := calls[0].Function.Arguments.Get("days")
		if city != "fake" || days != 1.0 {
			t.Fatalf("stream=%v arguments: %v %v", stream, city, days)
		}
		// The call and its result go back as OpenAI messages.
		history := []api.Message{
			{Role: "user", Content: "weather?"},
			{Role: "assistant", ToolCalls: calls},
			{Role: "tool", ToolName: "get_weather", Content: "sunny"},
		}
		if err := e.ol.Chat(ctx(t), &api.ChatRequest{Model: "tiny", Messages: history, Stream: &stream}, func(api.ChatResponse) error { return nil }); err != nil {
			t.Fatal(err)
		}
		var sent struct {
			Messages []struct {
				Role       string `json:"role"`
				ToolCallID string `json:"tool_call_id"`
				ToolCalls  []struct {
					ID       string `json:"id"`
					Function struct {
						Arguments string `json:"arguments"`
					} `json:"function"`
				} `json:"tool_calls"`
			} `json:"messages"`
		}
		json.Unmarshal(e.oai[0].LastBody("/v1/chat/completions"), &sent)
		m := sent.Messages
		if len(m) != 3 || len(m[1].ToolCalls) != 1 || m[2].ToolCallID == "" || m[2].ToolCallID != m[1].ToolCalls[0].ID || !json.Valid([]byte(m[1].ToolCalls[0].Function.Arguments)) {
			t.Fatalf("stream=%v history sent: %+v", stream, m)
		}
	}

	// Reasoning comes back as thinking, unless thinking was turned off.
	for _, think := range []bool{true, false} {
		var thinking, content strings.Builder
		err := e.ol.Chat(ctx(t), &api.ChatRequest{Model: "tiny-reason", Messages: []api.Message{{Role: "user", Content: "hm"}}, Think: &api.ThinkValue{Value: think}}, func(r api.ChatResponse) error {
			thinking.WriteString(r.Message.Thinking)
			content.WriteString(r.Message.Content)
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		full := openaitest.ReplyText(openaitest.DefaultChunks)
		half := len(openaitest.ReplyText(openaitest.DefaultChunks / 2))
		if content.String() != full[half:] || (think && thinking.String() != full[:half]) || (!think && thinking.Len() != 0) {
			t.Fatalf("think=%v: thinking %q content %q", think, thinking.String(), content.String())
		}
	}

	// format and images.
	png := []byte("\x89PNG\r\n\x1a\nrest-of-image")
	noStream := false
	for _, format := range []string{`"json"`, `{"type":"object","properties":{"a":{"type":"string"}}}`} {
		err := e.ol.Chat(ctx(t), &api.ChatRequest{Model: "tiny", Format: json.RawMessage(format), Stream: &noStream,
			Messages: []api.Message{{Role: "user", Content: "see", Images: []api.ImageData{png}}}}, func(api.ChatResponse) error { return nil })
		if err != nil {
			t.Fatal(err)
		}
		var sent struct {
			ResponseFormat struct {
				Type       string `json:"type"`
				JSONSchema struct {
					Schema json.RawMessage `json:"schema"`
				} `json:"json_schema"`
			} `json:"response_format"`
			Messages []struct {
				Content []struct {
					Type     string `json:"type"`
					Text     string `json:"text"`
					ImageURL struct {
						URL string `json:"url"`
					} `json:"image_url"`
				} `json:"content"`
			} `json:"messages"`
		}
		if err := json.Unmarshal(e.oai[0].LastBody("/v1/chat/completions"), &sent); err != nil {
			t.Fatal(err)
		}
		wantType := map[bool]string{true: "json_object", false: "json_schema"}[format == `"json"`]
		parts := sent.Messages[0].Content
		if sent.ResponseFormat.Type != wantType || len(parts) != 2 || parts[0].Text != "see" || !strings.HasPrefix(parts[1].ImageURL.URL, "data:image/png;base64,iVBORw0KGgp") {
			t.Fatalf("format %s sent %+v", format, sent)
		}
	}
	e.checkTotals()
}

func TestOllamaClientErrorsOverOpenAIBackend(t *testing.T) {
	e := newMixedEnv(t, 0, []openaitest.Config{{}}, nil)
	var se api.StatusError
	err := e.ol.Chat(ctx(t), &api.ChatRequest{Model: "nope", Messages: []api.Message{{Role: "user", Content: "x"}}}, func(api.ChatResponse) error { return nil })
	if !errors.As(err, &se) || se.StatusCode != 404 || se.ErrorMessage != "model 'nope' not found" {
		t.Fatalf("unknown model: %v", err)
	}
	// A backend's own error comes back in Ollama's shape.
	status, _, body := e.raw("/api/chat", `{"model":"tiny-embed","messages":[{"role":"user","content":"x"}]}`)
	var doc map[string]any
	if json.Unmarshal(body, &doc); status != 400 || !strings.Contains(doc["error"].(string), "does not support generation") {
		t.Fatalf("backend error: %d %s", status, body)
	}
	// An error mid-stream ends the stream with Ollama's error line.
	// (Translation keeps only what OpenAI has words for, so the fault
	// travels in a header, which Drover passes on.)
	status, _, body = e.rawHeader("/api/chat", `{"model":"tiny","messages":[{"role":"user","content":"x"}]}`, openaitest.FaultHeader, `{"error_after_chunks":2,"error":"engine died"}`)
	lines := strings.Split(strings.TrimSpace(string(body)), "\n")
	if status != 200 || len(lines) != 3 || lines[2] != `{"error":"engine died"}` {
		t.Fatalf("mid-stream error: %d %s", status, body)
	}
	// When every backend fails, the last answer is translated too.
	status, _, body = e.rawHeader("/api/generate", `{"model":"tiny","prompt":"x"}`, openaitest.FaultHeader, `{"status":500,"error":"engine dead"}`)
	if status != 500 || string(body) != `{"error":"engine dead"}` {
		t.Fatalf("5xx: %d %s", status, body)
	}
	// Loading a model that only OpenAI-type backends serve is a no-op.
	var final api.ChatResponse
	if err := e.ol.Chat(ctx(t), &api.ChatRequest{Model: "tiny"}, func(r api.ChatResponse) error { final = r; return nil }); err != nil || final.DoneReason != "load" || !final.Done {
		t.Fatalf("load: %v %+v", err, final)
	}
	if n := e.oai[0].Requests("/v1/chat/completions"); n != 3 {
		t.Fatalf("%d backend chat requests", n)
	}
}
