package translate

import (
	"bytes"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"
)

func TestChatRequest(t *testing.T) {
	cases := []struct {
		name, in string
		want     map[string]any // fields of the translated body, compared as JSON
		path     string
		stream   bool
	}{
		{"defaults stream with usage", `{"model":"m","messages":[{"role":"user","content":"hi"}]}`,
			map[string]any{"model": "backend-m", "stream": true, "stream_options": map[string]any{"include_usage": true}, "messages": []any{map[string]any{"role": "user", "content": "hi"}}}, "/v1/chat/completions", true},
		{"options", `{"model":"m","stream":false,"messages":[],"options":{"num_predict":5,"temperature":0.2,"top_p":0.9,"top_k":4,"seed":1,"stop":["a"],"frequency_penalty":0.3,"presence_penalty":0.4,"num_ctx":8192}}`,
			map[string]any{"stream": false, "max_tokens": 5.0, "temperature": 0.2, "top_p": 0.9, "top_k": 4.0, "seed": 1.0, "stop": []any{"a"}, "frequency_penalty": 0.3, "presence_penalty": 0.4, "num_ctx": nil, "stream_options": nil}, "/v1/chat/completions", false},
		{"infinite num_predict", `{"model":"m","messages":[],"options":{"num_predict":-1}}`, map[string]any{"max_tokens": nil}, "/v1/chat/completions", true},
		{"json format", `{"model":"m","messages":[],"format":"json"}`, map[string]any{"response_format": map[string]any{"type": "json_object"}}, "/v1/chat/completions", true},
		{"schema format", `{"model":"m","messages":[],"format":{"type":"object"}}`,
			map[string]any{"response_format": map[string]any{"type": "json_schema", "json_schema": map[string]any{"name": "response", "schema": map[string]any{"type": "object"}, "strict": true}}}, "/v1/chat/completions", true},
		{"think level", `{"model":"m","messages":[],"think":"high"}`, map[string]any{"reasoning_effort": "high"}, "/v1/chat/completions", true},
		{"tool history", `{"model":"m","messages":[{"role":"assistant","content":"","thinking":"hmm","tool_calls":[{"function":{"name":"a","arguments":{"x":1}}},{"function":{"name":"b","arguments":{}}}]},{"role":"tool","tool_name":"b","content":"B"},{"role":"tool","content":"A"}],"tools":[{"type":"function","function":{"name":"a"}}]}`,
			map[string]any{"tools": []any{map[string]any{"type": "function", "function": map[string]any{"name": "a"}}}, "messages": []any{
				map[string]any{"role": "assistant", "content": "", "reasoning_content": "hmm", "tool_calls": []any{
					map[string]any{"id": "call_1", "type": "function", "function": map[string]any{"name": "a", "arguments": `{"x":1}`}},
					map[string]any{"id": "call_2", "type": "function", "function": map[string]any{"name": "b", "arguments": `{}`}},
				}},
				map[string]any{"role": "tool", "content": "B", "name": "b", "tool_call_id": "call_2"},
				map[string]any{"role": "tool", "content": "A", "tool_call_id": "call_1"},
			}}, "/v1/chat/completions", true},
	}
	for _, c := range cases {
		r, err := ChatRequest([]byte(c.in), "backend-m")
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		var got map[string]any
		json.Unmarshal(r.Body, &got)
		for k, v := range c.want {
			g, _ := json.Marshal(got[k])
			w, _ := json.Marshal(v)
			if !bytes.Equal(g, w) {
				t.Errorf("%s: %s = %s, want %s", c.name, k, g, w)
			}
		}
		if r.Path != c.path || r.Stream != c.stream {
			t.Errorf("%s: %s stream=%v", c.name, r.Path, r.Stream)
		}
	}
	if _, err := ChatRequest([]byte(`{"model":"m","messages":[{"role":"user","images":["!!!"]}]}`), "m"); err == nil {
		t.Error("bad image accepted")
	}
}

func TestGenerateAndEmbedRequests(t *testing.T) {
	r, _ := GenerateRequest([]byte(`{"model":"m","prompt":"p","system":"s","images":["R0lGODlhAQABAAAAACw="]}`), "bm")
	if r.Path != "/v1/chat/completions" || !bytes.Contains(r.Body, []byte(`{"role":"system","content":"s"}`)) || !bytes.Contains(r.Body, []byte(`data:image/gif;base64,R0lGOD`)) {
		t.Fatalf("generate: %s %s", r.Path, r.Body)
	}
	r, _ = GenerateRequest([]byte(`{"model":"m","prompt":"def f(","suffix":"return 1","stream":false}`), "bm")
	if r.Path != "/v1/completions" || !bytes.Contains(r.Body, []byte(`"suffix":"return 1"`)) || !bytes.Contains(r.Body, []byte(`"prompt":"def f("`)) {
		t.Fatalf("fim: %s %s", r.Path, r.Body)
	}
	r, _ = EmbedRequest([]byte(`{"model":"m","input":["a","b"],"dimensions":8,"truncate":true}`), "bm")
	if r.Path != "/v1/embeddings" || string(r.Body) != `{"dimensions":8,"encoding_format":"float","input":["a","b"],"model":"bm"}` {
		t.Fatalf("embed: %s", r.Body)
	}
}

// feed writes body to a translated response in pieces of size n.
func feed(t *testing.T, r Request, status int, body string, n int) (string, http.Header) {
	t.Helper()
	var out bytes.Buffer
	h := http.Header{}
	w := Response(r, "pub", time.Now(), status, h, &out)
	for i := 0; i < len(body); i += n {
		if _, err := w.Write([]byte(body[i:min(i+n, len(body))])); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return out.String(), h
}

const chatStream = `data: {"choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}

data: {"choices":[{"index":0,"delta":{"reasoning_content":"think"}}]}

data: {"choices":[{"index":0,"delta":{"content":"Hel"}}]}

data: {"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"c1","type":"function","function":{"name":"f","arguments":""}}]}}]}

data: {"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\"a\":"}}]}}]}

data: {"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"1}"}}]}}]}

data: {"choices":[{"index":0,"delta":{},"finish_reason":"tool_calls"}]}

data: {"choices":[],"usage":{"prompt_tokens":7,"completion_tokens":3,"total_tokens":10}}

data: [DONE]

`

func TestChatStreamTranslation(t *testing.T) {
	for _, n := range []int{1, 7, 64, len(chatStream)} {
		out, h := feed(t, Request{Kind: Chat, Stream: true, Think: true}, 200, chatStream, n)
		lines := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
		if h.Get("Content-Type") != "application/x-ndjson" || len(lines) != 4 {
			t.Fatalf("n=%d: %s", n, out)
		}
		type line struct {
			Model   string `json:"model"`
			Message struct {
				Content   string `json:"content"`
				Thinking  string `json:"thinking"`
				ToolCalls []struct {
					ID       string `json:"id"`
					Function struct {
						Name      string         `json:"name"`
						Arguments map[string]any `json:"arguments"`
					} `json:"function"`
				} `json:"tool_calls"`
			} `json:"message"`
			Done            bool   `json:"done"`
			DoneReason      string `json:"done_reason"`
			PromptEvalCount int    `json:"prompt_eval_count"`
			EvalCount       int    `json:"eval_count"`
		}
		var msgs []line
		for _, l := range lines {
			var x line
			if err := json.Unmarshal([]byte(l), &x); err != nil {
				t.Fatalf("n=%d: %q: %v", n, l, err)
			}
			msgs = append(msgs, x)
		}
		if msgs[0].Message.Thinking != "think" || msgs[1].Message.Content != "Hel" || msgs[0].Model != "pub" {
			t.Fatalf("n=%d content: %s", n, out)
		}
		tc := msgs[2].Message.ToolCalls
		if len(tc) != 1 || tc[0].ID != "c1" || tc[0].Function.Name != "f" || tc[0].Function.Arguments["a"] != 1.0 {
			t.Fatalf("n=%d tool calls: %s", n, out)
		}
		if f := msgs[3]; !f.Done || f.DoneReason != "stop" || f.PromptEvalCount != 7 || f.EvalCount != 3 {
			t.Fatalf("n=%d final: %s", n, out)
		}
	}
}

func TestStreamWithoutDoneOrUsage(t *testing.T) {
	// A backend that ends cleanly without [DONE] and reports nothing gets a
	// final chunk with no counts (unknown, not zero); thinking off drops
	// reasoning.
	body := "data: {\"choices\":[{\"index\":0,\"delta\":{\"reasoning\":\"x\",\"content\":\"a\"},\"finish_reason\":\"length\"}]}\n\n"
	out, _ := feed(t, Request{Kind: Generate, Stream: true, Think: false}, 200, body, 5)
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 2 || strings.Contains(out, "thinking") || !strings.Contains(lines[0], `"response":"a"`) ||
		strings.Contains(lines[1], "eval_count") || !strings.Contains(lines[1], `"done_reason":"length","done":true`) {
		t.Fatalf("%s", out)
	}
}

func TestWholeAndErrorTranslation(t *testing.T) {
	out, _ := feed(t, Request{Kind: Chat, Think: true}, 200, `{"choices":[{"index":0,"message":{"role":"assistant","content":"hi","reasoning_content":"r","tool_calls":[{"id":"x","type":"function","function":{"name":"f","arguments":"{\"k\":\"v\"}"}}]},"finish_reason":"tool_calls"}],"usage":{"prompt_tokens":2,"completion_tokens":1},"timings":{"prompt_n":1,"cache_n":1,"predicted_n":1,"prompt_ms":2,"predicted_ms":3}}`, 9)
	for _, want := range []string{`"content":"hi","thinking":"r","tool_calls":[{"id":"x","function":{"index":0,"name":"f","arguments":{"k":"v"}}}]`, `"done_reason":"stop","done":true`, `"prompt_eval_count":2,"prompt_eval_duration":2000000,"eval_count":1,"eval_duration":3000000`} {
		if !strings.Contains(out, want) {
			t.Fatalf("whole chat lacks %s: %s", want, out)
		}
	}
	out, _ = feed(t, Request{Kind: Embed}, 200, `{"data":[{"index":1,"embedding":[0.5]},{"index":0,"embedding":[0.25]}],"usage":{"prompt_tokens":4}}`, 3)
	if !strings.Contains(out, `"model":"pub","embeddings":[[0.25],[0.5]]`) || !strings.Contains(out, `"prompt_eval_count":4`) {
		t.Fatalf("embed: %s", out)
	}
	for body, want := range map[string]string{
		`{"error":{"message":"m1","type":"x","code":400}}`:           "m1",
		`{"object":"error","message":"m2","type":"BadRequestError"}`: "m2",
		`{"error":"m3"}`:                        "m3",
		`{"detail":[{"msg":"field required"}]}`: `[{"msg":"field required"}]`,
		`upstream connect error`:                "upstream connect error",
	} {
		out, h := feed(t, Request{Kind: Chat, Stream: true}, 400, body, 4)
		var doc map[string]string
		if json.Unmarshal([]byte(out), &doc); doc["error"] != want || !strings.HasPrefix(h.Get("Content-Type"), "application/json") {
			t.Fatalf("error %s: %s", body, out)
		}
	}
}
