package ollamatest

import (
	"bufio"
	"bytes"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"math"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"
)

// The values that differ between runs: ids, timestamps, tool call ids.
var (
	reID      = regexp.MustCompile(`"(chatcmpl|cmpl)-\d{1,3}"`)
	reCreated = regexp.MustCompile(`"created":\d{10}`)
	reCallID  = regexp.MustCompile(`"call_[a-z0-9]{8}"`)
)

func stable(b []byte) string {
	s := reID.ReplaceAllString(string(b), `"$1-N"`)
	s = reCreated.ReplaceAllString(s, `"created":T`)
	return reCallID.ReplaceAllString(s, `"call_ID"`)
}

// sse splits an event stream into its data payloads, failing on bad framing.
func sse(t *testing.T, b []byte) []string {
	t.Helper()
	var out []string
	for _, ev := range strings.SplitAfter(string(b), "\n\n") {
		if ev == "" {
			continue
		}
		data, ok := strings.CutPrefix(ev, "data: ")
		if !ok || !strings.HasSuffix(data, "\n\n") || strings.Count(data, "\n") != 2 {
			t.Fatalf("bad SSE event %q in %q", ev, b)
		}
		out = append(out, strings.TrimSuffix(data, "\n\n"))
	}
	return out
}

const (
	chatHead = `{"id":"chatcmpl-N","object":"chat.completion.chunk","created":T,"model":"tiny","system_fingerprint":"fp_ollama","choices":[`
	cmplTail = `],"model":"tiny","system_fingerprint":"fp_ollama"`
)

func chatDelta(content, finish string) string {
	return chatHead + `{"index":0,"delta":{"role":"assistant","content":` + content + `},"finish_reason":` + finish + `}]}`
}

func cmplChunk(text, finish, usage string) string {
	return `{"id":"cmpl-N","object":"text_completion","created":T,"choices":[{"text":` + text + `,"index":0,"finish_reason":` + finish + `}` + cmplTail + usage + `}`
}

func TestOpenAIWireShapes(t *testing.T) {
	e := start(t, Config{Chunks: 2})
	const zero = `,"usage":{"prompt_tokens":0,"completion_tokens":0,"total_tokens":0}`
	cases := []struct {
		name, method, path, body string
		status                   int
		ctype                    string
		want                     string // whole body after stable()
	}{
		{"chat", "POST", "/v1/chat/completions", `{"model":"tiny","messages":[{"role":"user","content":"hi there"}],"max_tokens":3}`,
			200, "application/json",
			`{"id":"chatcmpl-N","object":"chat.completion","created":T,"model":"tiny","system_fingerprint":"fp_ollama","choices":[{"index":0,"message":{"role":"assistant","content":" llama three fast"},"finish_reason":"length"}],"usage":{"prompt_tokens":6,"completion_tokens":3,"total_tokens":9}}` + "\n"},
		{"chat stream usage", "POST", "/v1/chat/completions", `{"model":"tiny","messages":[{"role":"user","content":"a"},{"role":"user","content":"b c"}],"stream":true,"stream_options":{"include_usage":true}}`,
			200, "text/event-stream",
			"data: " + chatDelta(`" llama"`, "null") + "\n\ndata: " + chatDelta(`" three"`, "null") + "\n\ndata: " + chatDelta(`""`, `"stop"`) +
				"\n\ndata: " + chatHead + `],"usage":{"prompt_tokens":11,"completion_tokens":2,"total_tokens":13}}` + "\n\ndata: [DONE]\n\n"},
		{"chat stream", "POST", "/v1/chat/completions", `{"model":"tiny","messages":[{"role":"user","content":"a"}],"stream":true,"max_tokens":0}`,
			200, "text/event-stream", "data: " + chatDelta(`""`, `"length"`) + "\n\ndata: [DONE]\n\n"},
		{"completion", "POST", "/v1/completions", `{"model":"tiny","prompt":"one two"}`,
			200, "application/json",
			`{"id":"cmpl-N","object":"text_completion","created":T,"model":"tiny","system_fingerprint":"fp_ollama","choices":[{"text":" llama three","index":0,"finish_reason":"stop"}],"usage":{"prompt_tokens":6,"completion_tokens":2,"total_tokens":8}}` + "\n"},
		{"completion stream usage", "POST", "/v1/completions", `{"model":"tiny","prompt":"x","stream":true,"max_tokens":1,"stream_options":{"include_usage":true}}`,
			200, "text/event-stream",
			"data: " + cmplChunk(`" llama"`, "null", zero) + "\n\ndata: " + cmplChunk(`""`, `"length"`, zero) +
				"\n\ndata: " + `{"id":"cmpl-N","object":"text_completion","created":T,"choices":[` + cmplTail + `,"usage":{"prompt_tokens":5,"completion_tokens":1,"total_tokens":6}}` + "\n\ndata: [DONE]\n\n"},
		{"completion load", "POST", "/v1/completions", `{"model":"tiny"}`, 200, "application/json",
			`{"id":"cmpl-N","object":"text_completion","created":T,"model":"tiny","system_fingerprint":"fp_ollama","choices":[{"text":"","index":0,"finish_reason":"load"}]` + zero + "}\n"},
		{"completion load stream", "POST", "/v1/completions", `{"model":"tiny","stream":true}`, 200, "text/event-stream",
			"data: " + cmplChunk(`""`, `"load"`, "") + "\n\ndata: [DONE]\n\n"},
		{"not found", "POST", "/v1/chat/completions", `{"model":"nope","messages":[{"role":"user","content":"x"}],"stream":true}`,
			404, "application/json", `{"error":{"message":"model 'nope' not found","type":"api_error","param":null,"code":null}}` + "\n"},
		{"no model", "POST", "/v1/chat/completions", `{"messages":[{"role":"user","content":"x"}]}`,
			400, "application/json", `{"error":{"message":"model is required","type":"api_error","param":null,"code":null}}` + "\n"},
		{"no tools", "POST", "/v1/chat/completions", `{"model":"tiny","messages":[{"role":"user","content":"x"}],"tools":[{"type":"function","function":{"name":"f"}}]}`,
			400, "application/json", `{"error":{"message":"registry.ollama.ai/library/tiny:latest does not support tools","type":"api_error","param":null,"code":null}}` + "\n"},
		{"no thinking", "POST", "/v1/chat/completions", `{"model":"tiny","messages":[{"role":"user","content":"x"}],"reasoning":{"effort":"low"}}`,
			400, "application/json", `{"error":{"message":"\"tiny\" does not support thinking","type":"api_error","param":null,"code":null}}` + "\n"},
		{"empty messages", "POST", "/v1/chat/completions", `{"model":"tiny"}`,
			400, "application/json; charset=utf-8", `{"error":{"message":"[] is too short - 'messages'","type":"invalid_request_error","param":null,"code":null}}`},
		{"no body", "POST", "/v1/chat/completions", ``,
			400, "application/json; charset=utf-8", `{"error":{"message":"EOF","type":"invalid_request_error","param":null,"code":null}}`},
		{"nested type error", "POST", "/v1/chat/completions", `{"model":"tiny","messages":[{"role":5}]}`,
			400, "application/json; charset=utf-8", `{"error":{"message":"json: cannot unmarshal number into Go struct field Message.messages.role of type string","type":"invalid_request_error","param":null,"code":null}}`},
		{"type error", "POST", "/v1/chat/completions", `{"model":"tiny","messages":"x"}`,
			400, "application/json; charset=utf-8", `{"error":{"message":"json: cannot unmarshal string into Go struct field ChatCompletionRequest.messages of type []openai.Message","type":"invalid_request_error","param":null,"code":null}}`},
		{"content type", "POST", "/v1/chat/completions", `{"model":"tiny","messages":[{"role":"user"}]}`,
			400, "application/json; charset=utf-8", `{"error":{"message":"invalid message content type: \u003cnil\u003e","type":"invalid_request_error","param":null,"code":null}}`},
		{"stop type", "POST", "/v1/completions", `{"model":"tiny","prompt":"x","stop":["a",1]}`,
			400, "application/json; charset=utf-8", `{"error":{"message":"invalid type for 'stop' field: float64","type":"invalid_request_error","param":null,"code":null}}`},
		{"completion not found", "POST", "/v1/completions", `{"model":"","prompt":"x"}`,
			404, "application/json", `{"error":{"message":"model '' not found","type":"api_error","param":null,"code":null}}` + "\n"},
		{"embed not found", "POST", "/v1/embeddings", `{"model":"nope","input":"x"}`,
			404, "application/json", `{"error":{"message":"model \"nope\" not found, try pulling it first","type":"api_error","param":null,"code":null}}` + "\n"},
		{"embed no input", "POST", "/v1/embeddings", `{"model":"tiny-embed","input":[]}`,
			400, "application/json; charset=utf-8", `{"error":{"message":"invalid input","type":"invalid_request_error","param":null,"code":null}}`},
		{"embed input type", "POST", "/v1/embeddings", `{"model":"tiny-embed","input":[1]}`,
			400, "application/json", `{"error":{"message":"invalid input type","type":"api_error","param":null,"code":null}}` + "\n"},
		{"embed format", "POST", "/v1/embeddings", `{"model":"tiny-embed","input":"x","encoding_format":"hex"}`,
			400, "application/json; charset=utf-8", `{"error":{"message":"Invalid value for 'encoding_format' = hex. Supported values: ['float', 'base64'].","type":"invalid_request_error","param":null,"code":null}}`},
		{"model", "GET", "/v1/models/TINY", ``, 200, "application/json", `{"id":"TINY","object":"model","created":T,"owned_by":"library"}` + "\n"},
		{"model not found", "GET", "/v1/models/nope", ``, 404, "application/json", `{"error":{"message":"model 'nope' not found","type":"api_error","param":null,"code":null}}` + "\n"},
		{"model bad name", "GET", "/v1/models/a:b:c", ``, 500, "application/json", `{"error":{"message":"unqualified name: registry.ollama.ai/library/a:b:c","type":"api_error","param":null,"code":null}}` + "\n"},
		{"model two segments", "GET", "/v1/models/a/b", ``, 404, "text/plain", `404 page not found`},
		{"model wrong method", "POST", "/v1/models/tiny", ``, 405, "text/plain", `405 method not allowed`},
		{"models wrong method", "POST", "/v1/models", ``, 405, "text/plain", `405 method not allowed`},
		{"chat wrong method", "GET", "/v1/chat/completions", ``, 405, "text/plain", `405 method not allowed`},
		{"unknown", "POST", "/v1/nothing", `{}`, 404, "text/plain", `404 page not found`},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := e.do(c.method, c.path, c.body)
			if r.err != nil || r.status != c.status || r.ctype != c.ctype {
				t.Fatalf("= %d %q err=%v %s", r.status, r.ctype, r.err, r.body)
			}
			if got := stable(r.body); got != c.want {
				t.Fatalf("body\n got %q\nwant %q", got, c.want)
			}
			if c.ctype == "text/event-stream" {
				sse(t, r.body)
			}
		})
	}
}

func TestOpenAIModelsList(t *testing.T) {
	e := start(t, Config{Models: []Model{{Name: "a"}, {Name: "ns/b:7b"}}})
	r := e.do("GET", "/v1/models", "")
	want := `{"object":"list","data":[{"id":"ns/b:7b","object":"model","created":T,"owned_by":"ns"},{"id":"a:latest","object":"model","created":T,"owned_by":"library"}]}` + "\n"
	if r.status != 200 || r.ctype != "application/json" || stable(r.body) != want {
		t.Fatalf("= %d %q %s", r.status, r.ctype, r.body)
	}
	e.s.RemoveModel("a")
	e.s.RemoveModel("ns/b:7b")
	if r := e.do("GET", "/v1/models", ""); string(r.body) != `{"object":"list","data":null}`+"\n" {
		t.Fatalf("empty list = %s", r.body)
	}
	client := &http.Client{Transport: e.client.Transport, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := client.Get(e.s.URL() + "/v1/models/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMovedPermanently || resp.Header.Get("Location") != "/v1/models" {
		t.Fatalf("trailing slash = %d %q", resp.StatusCode, resp.Header.Get("Location"))
	}
}

func TestOpenAIEmbeddings(t *testing.T) {
	e := start(t, Config{})
	cases := []struct {
		name, body string
		inputs     []string
		dims       int
		b64        bool
	}{
		{"string", `{"model":"tiny-embed","input":"hello there"}`, []string{"hello there"}, 64, false},
		{"empty string", `{"model":"tiny-embed","input":"","dimensions":3}`, []string{""}, 3, false},
		{"array base64", `{"model":"tiny-embed","input":["a","b c"],"dimensions":4,"encoding_format":"BASE64"}`, []string{"a", "b c"}, 4, true},
	}
	var wantTokens int64
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := e.post("/v1/embeddings", c.body)
			if r.status != 200 || r.ctype != "application/json" || !bytes.HasSuffix(r.body, []byte("}\n")) {
				t.Fatalf("= %d %q %s", r.status, r.ctype, r.body)
			}
			var got struct {
				Object string `json:"object"`
				Data   []struct {
					Object    string          `json:"object"`
					Embedding json.RawMessage `json:"embedding"`
					Index     int             `json:"index"`
				} `json:"data"`
				Model string         `json:"model"`
				Usage map[string]int `json:"usage"`
			}
			if err := json.Unmarshal(r.body, &got); err != nil || got.Object != "list" || got.Model != "tiny-embed" || len(got.Data) != len(c.inputs) {
				t.Fatalf("%v: %s", err, r.body)
			}
			tokens := 0
			for i, in := range c.inputs {
				d := got.Data[i]
				want := Embedding(in, c.dims)
				var v []float32
				if c.b64 {
					var s string
					json.Unmarshal(d.Embedding, &s)
					raw, _ := base64.StdEncoding.DecodeString(s)
					for j := 0; j+4 <= len(raw); j += 4 {
						v = append(v, math.Float32frombits(binary.LittleEndian.Uint32(raw[j:])))
					}
				} else {
					json.Unmarshal(d.Embedding, &v)
					if std, _ := json.Marshal(want); string(std) != string(d.Embedding) {
						t.Errorf("float encoding %s, encoding/json says %s", d.Embedding, std)
					}
				}
				if d.Object != "embedding" || d.Index != i || len(v) != c.dims || v[0] != want[0] || v[c.dims-1] != want[c.dims-1] {
					t.Fatalf("data[%d] = %+v %v, want %v", i, d, v, want)
				}
				tokens += countWords(in) + PerMessageTokens
			}
			if got.Usage["prompt_tokens"] != tokens || got.Usage["total_tokens"] != tokens {
				t.Fatalf("usage %v, want %d", got.Usage, tokens)
			}
			wantTokens += int64(tokens)
		})
	}
	if got := e.s.Counters().EmbedPromptEvalCount; got != wantTokens {
		t.Errorf("EmbedPromptEvalCount = %d, want %d", got, wantTokens)
	}
}

func TestAppendJSONFloatsMatchesEncodingJSON(t *testing.T) {
	v := []float32{0, 1, -1, 0.5, 1e-5, -3.2e-7, 1e-6, 123456789, 1e21, 5e-45, float32(math.Pi)}
	want, _ := json.Marshal(v)
	if got := appendJSONFloats(nil, v); string(got) != string(want) {
		t.Fatalf("got %s, want %s", got, want)
	}
}

// TestOpenAICounters checks that /v1 replies count exactly as the same
// request on /api/chat or /api/generate does.
func TestOpenAICounters(t *testing.T) {
	cases := []struct {
		name, native, nativeBody, path, body string
	}{
		{"chat", "/api/chat", `{"model":"tiny","stream":false,"messages":[{"role":"system","content":"be brief"},{"role":"user","content":"hello there you"}],"options":{"num_predict":4}}`,
			"/v1/chat/completions", `{"model":"tiny","messages":[{"role":"system","content":"be brief"},{"role":"user","content":"hello there you"}],"max_tokens":4}`},
		{"chat stream", "/api/chat", `{"model":"tiny","messages":[{"role":"user","content":"x y"}]}`,
			"/v1/chat/completions", `{"model":"tiny","stream":true,"messages":[{"role":"user","content":"x y"}]}`},
		{"chat parts", "/api/chat", `{"model":"tiny","messages":[{"role":"user","content":"a b"},{"role":"user","content":"c"}]}`,
			"/v1/chat/completions", `{"model":"tiny","stream":true,"messages":[{"role":"user","content":[{"type":"text","text":"a b"},{"type":"text","text":"c"}]}]}`},
		{"completion", "/api/generate", `{"model":"tiny","stream":false,"prompt":"one two three","suffix":"","options":{"num_predict":2}}`,
			"/v1/completions", `{"model":"tiny","prompt":"one two three","max_tokens":2}`},
		{"completion stream", "/api/generate", `{"model":"tiny","prompt":"one","fake":{"chunks":7}}`,
			"/v1/completions", `{"model":"tiny","prompt":"one","stream":true,"stream_options":{"include_usage":true},"fake":{"chunks":7}}`},
	}
	e := start(t, Config{Chunks: 5})
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			before := e.s.Counters()
			if r := e.post(c.native, c.nativeBody); r.status != 200 {
				t.Fatalf("native = %d %s", r.status, r.body)
			}
			mid := e.s.Counters()
			r := e.post(c.path, c.body)
			if r.status != 200 {
				t.Fatalf("= %d %s", r.status, r.body)
			}
			after := e.s.Counters()
			native := [3]int64{mid.PromptEvalCount - before.PromptEvalCount, mid.EvalCount - before.EvalCount, mid.Completed - before.Completed}
			openai := [3]int64{after.PromptEvalCount - mid.PromptEvalCount, after.EvalCount - mid.EvalCount, after.Completed - mid.Completed}
			if native != openai || openai[2] != 1 {
				t.Fatalf("counted (prompt, eval, completed) %v, /api counted %v", openai, native)
			}
			// The reply's usage reports what was counted.
			body := string(r.body)
			if strings.HasPrefix(body, "data: ") {
				events := sse(t, r.body)
				if events[len(events)-1] != "[DONE]" {
					t.Fatalf("no [DONE]: %s", body)
				}
				body = events[len(events)-2]
			}
			var u struct{ Usage map[string]int64 }
			json.Unmarshal([]byte(body), &u)
			if u.Usage != nil && (u.Usage["prompt_tokens"] != openai[0] || u.Usage["completion_tokens"] != openai[1]) {
				t.Fatalf("usage %v, counted %v", u.Usage, openai)
			}
		})
	}
	if n := e.s.Requests("/v1/chat/completions"); n != 3 {
		t.Errorf("Requests(/v1/chat/completions) = %d", n)
	}
}

func TestOpenAIFaults(t *testing.T) {
	e := start(t, Config{Chunks: 4})
	chat := func(stream bool, fake string) string {
		s := `{"model":"tiny","messages":[{"role":"user","content":"x"}]`
		if stream {
			s += `,"stream":true`
		}
		if fake != "" {
			s += `,"fake":` + fake
		}
		return s + "}"
	}
	apiErr := func(msg string) string {
		return `{"error":{"message":"` + msg + `","type":"api_error","param":null,"code":null}}` + "\n"
	}
	cases := []struct {
		name, path, body, header string
		status                   int
		events                   int    // SSE events expected (0: not a stream)
		cut                      bool   // the read must fail
		want                     string // the body, or the last event after stable()
	}{
		{"status", "/v1/chat/completions", chat(true, `{"status":502,"error":"boom"}`), "", 502, 0, false, apiErr("boom")},
		{"header status", "/v1/completions", `{"model":"tiny","prompt":"x"}`, `{"status":503}`, 503, 0, false, apiErr("Service Unavailable")},
		{"header on models", "/v1/embeddings", `{"model":"tiny-embed","input":"x"}`, `{"status":429,"error":"slow down"}`, 429, 0, false, apiErr("slow down")},
		{"header chunks", "/v1/chat/completions", chat(true, ""), `{"chunks":1}`, 200, 3, false, "[DONE]"},
		{"error mid-stream", "/v1/chat/completions", chat(true, `{"error_after_chunks":2,"error":"runner died"}`), "", 200, 3, false,
			`{"id":"chatcmpl-N","object":"chat.completion.chunk","created":T,"model":"","system_fingerprint":"fp_ollama","choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]}`},
		{"error mid-completion", "/v1/completions", `{"model":"tiny","prompt":"x","stream":true,"stream_options":{"include_usage":true},"fake":{"error_after_chunks":0}}`, "", 200, 1, false,
			`{"id":"cmpl-N","object":"text_completion","created":T,"choices":[{"text":"","index":0,"finish_reason":null}],"model":"","system_fingerprint":"fp_ollama","usage":{"prompt_tokens":0,"completion_tokens":0,"total_tokens":0}}`},
		{"error non-stream", "/v1/chat/completions", chat(false, `{"error_after_chunks":1,"error":"runner died"}`), "", 500, 0, false, apiErr("runner died")},
		{"cut stream", "/v1/chat/completions", chat(true, `{"fail_after_chunks":2}`), "", 200, 2, true, ""},
		{"cut non-stream", "/v1/completions", `{"model":"tiny","prompt":"x","fake":{"fail_after_chunks":1}}`, "", 0, 0, true, ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			req, _ := http.NewRequest("POST", e.s.URL()+c.path, strings.NewReader(c.body))
			if c.header != "" {
				req.Header.Set(FaultHeader, c.header)
			}
			resp, err := e.client.Do(req)
			var body []byte
			if err == nil {
				body, err = readAll(resp)
				if resp.StatusCode != c.status {
					t.Fatalf("status %d: %s", resp.StatusCode, body)
				}
			}
			if (err != nil) != c.cut {
				t.Fatalf("err = %v, %s", err, body)
			}
			if c.cut {
				if c.events > 0 && strings.Count(string(body), "\n\n") != c.events {
					t.Fatalf("cut after %q", body)
				}
				return
			}
			got := stable(body)
			if c.events > 0 {
				evs := sse(t, body)
				if len(evs) != c.events {
					t.Fatalf("%d events: %s", len(evs), body)
				}
				got = stable([]byte(evs[len(evs)-1]))
			}
			if got != c.want {
				t.Fatalf("got  %q\nwant %q", got, c.want)
			}
		})
	}
	if got := e.s.Counters(); got.Completed != 1 || got.Cut != 2 || got.EvalCount != 1 {
		t.Errorf("Counters = %+v: only the header-chunks reply may count", got)
	}

	e.s.SetFailure(http.StatusInternalServerError, "gpu on fire")
	for _, path := range []string{"/v1/chat/completions", "/v1/completions", "/v1/embeddings"} {
		r := e.post(path, `{"model":"tiny","prompt":"x","input":"x","messages":[{"role":"user","content":"x"}]}`)
		if r.status != 500 || r.ctype != "application/json" || string(r.body) != apiErr("gpu on fire") {
			t.Errorf("%s under SetFailure = %d %q %s", path, r.status, r.ctype, r.body)
		}
	}
	if r := e.do("GET", "/v1/models", ""); r.status != 200 {
		t.Errorf("/v1/models under SetFailure = %d", r.status)
	}
	e.s.SetFailure(0, "")
}

func TestOpenAIThinkingAndTools(t *testing.T) {
	e := start(t, Config{Chunks: 4, Models: []Model{
		{Name: "thinker", Capabilities: []Capability{CapCompletion, CapThinking, CapTools}},
	}})
	const tools = `,"tools":[{"type":"function","function":{"name":"get_weather","parameters":{"type":"object"}}}]`
	msgs := `"messages":[{"role":"user","content":"x"}]`
	cases := []struct {
		name, body string
		want       []string // stream events after stable(), or the one body
	}{
		{"think stream", `{"model":"thinker","stream":true,` + msgs + `}`, []string{
			`{"index":0,"delta":{"role":"assistant","content":"","reasoning":" llama"},"finish_reason":null}`,
			`{"index":0,"delta":{"role":"assistant","content":"","reasoning":" three"},"finish_reason":null}`,
			`{"index":0,"delta":{"role":"assistant","content":" fast"},"finish_reason":null}`,
			`{"index":0,"delta":{"role":"assistant","content":" fake"},"finish_reason":null}`,
			`{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":"stop"}`,
		}},
		{"no think", `{"model":"thinker","reasoning_effort":"none",` + msgs + `}`, []string{
			`{"index":0,"message":{"role":"assistant","content":" llama three fast fake"},"finish_reason":"stop"}`,
		}},
		{"think", `{"model":"thinker",` + msgs + `}`, []string{
			`{"index":0,"message":{"role":"assistant","content":" fast fake","reasoning":" llama three"},"finish_reason":"stop"}`,
		}},
		{"tool call stream", `{"model":"thinker","stream":true,"reasoning_effort":"none","fake":{"tool_call":true}` + tools + `,` + msgs + `}`, []string{
			`{"index":0,"delta":{"role":"assistant","content":"","tool_calls":[{"id":"call_ID","index":0,"type":"function","function":{"name":"get_weather","arguments":"{}"}}]},"finish_reason":null}`,
			`{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":"tool_calls"}`,
		}},
		{"tool call", `{"model":"thinker","fake":{"tool_call":true}` + tools + `,` + msgs + `}`, []string{
			`{"index":0,"message":{"role":"assistant","content":"","reasoning":" llama three","tool_calls":[{"id":"call_ID","index":0,"type":"function","function":{"name":"get_weather","arguments":"{}"}}]},"finish_reason":"tool_calls"}`,
		}},
		{"tool call without tools", `{"model":"thinker","reasoning_effort":"none","fake":{"tool_call":true},` + msgs + `}`, []string{
			`{"index":0,"message":{"role":"assistant","content":" llama three fast fake"},"finish_reason":"stop"}`,
		}},
	}
	choice := regexp.MustCompile(`"choices":\[(.*)\]`)
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := e.post("/v1/chat/completions", c.body)
			if r.status != 200 {
				t.Fatalf("= %d %s", r.status, r.body)
			}
			var got []string
			if r.ctype == "text/event-stream" {
				for _, ev := range sse(t, r.body) {
					if ev != "[DONE]" {
						got = append(got, choice.FindStringSubmatch(stable([]byte(ev)))[1])
					}
				}
			} else {
				got = []string{choice.FindStringSubmatch(stable(r.body))[1]}
			}
			if strings.Join(got, "\n") != strings.Join(c.want, "\n") {
				t.Fatalf("choices\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(c.want, "\n"))
			}
		})
	}
	if got := e.s.Counters(); got.EvalCount != int64(4*len(cases)) {
		t.Errorf("EvalCount = %d: tool calls count their tokens too", got.EvalCount)
	}
}

// TestOpenAIStreamFlushesFirstChunk checks time to first token is real on SSE.
func TestOpenAIStreamFlushesFirstChunk(t *testing.T) {
	e := start(t, Config{})
	req, _ := http.NewRequest("POST", e.s.URL()+"/v1/chat/completions",
		strings.NewReader(`{"model":"tiny","stream":true,"messages":[{"role":"user","content":"x"}],"fake":{"chunks":2,"hang_after_chunks":1}}`))
	resp, err := e.client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	line, err := bufio.NewReader(resp.Body).ReadString('\n')
	if err != nil || !strings.HasPrefix(line, `data: {"id":"chatcmpl-`) {
		t.Fatalf("first line %q, %v", line, err)
	}
}

const benchOpenAIChat = `{"model":"tiny","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"hello there, how are you today?"}]}`

// BenchmarkHandlerOpenAIChat measures a streamed /v1/chat/completions
// through the handler alone (no sockets).
func BenchmarkHandlerOpenAIChat(b *testing.B) {
	s := New(Config{})
	defer s.Close()
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			w := httptest.NewRecorder()
			s.ServeHTTP(w, httptest.NewRequest("POST", "/v1/chat/completions", strings.NewReader(benchOpenAIChat)))
			if w.Code != 200 {
				b.Fatal(w.Code)
			}
		}
	})
}
