package openaitest

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

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		goleak.IgnoreTopFunction("internal/poll.runtime_pollWait"),
		goleak.IgnoreTopFunction("net/http.(*persistConn).writeLoop"),
		goleak.IgnoreTopFunction("net/http.(*persistConn).readLoop"),
	)
}

func start(t *testing.T, cfg Config) *Server {
	t.Helper()
	s := New(cfg)
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	return s
}

func post(t *testing.T, s *Server, path, body string) (int, []byte) {
	t.Helper()
	resp, err := http.Post(s.URL()+path, "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}

// events splits an SSE body into its data payloads.
func events(t *testing.T, body []byte) []string {
	t.Helper()
	var out []string
	sc := bufio.NewScanner(bytes.NewReader(body))
	for sc.Scan() {
		if d, ok := strings.CutPrefix(sc.Text(), "data: "); ok {
			out = append(out, d)
		}
	}
	return out
}

func TestStreamUsageOnlyWhenAsked(t *testing.T) {
	cases := []struct {
		name       string
		cfg        Config
		body       string
		usage      bool
		timings    bool
		contentLen int
	}{
		{"vllm no usage asked", Config{}, `{"model":"tiny","messages":[{"role":"user","content":"a b"}],"stream":true}`, false, false, 10},
		{"vllm usage asked", Config{}, `{"model":"tiny","messages":[{"role":"user","content":"a b"}],"stream":true,"stream_options":{"include_usage":true}}`, true, false, 10},
		{"llama.cpp timings", Config{Flavor: LlamaCpp}, `{"model":"tiny","messages":[{"role":"user","content":"a b"}],"stream":true,"max_tokens":3}`, false, true, 3},
		{"no usage mode", Config{NoUsage: true, Flavor: LlamaCpp}, `{"model":"tiny","messages":[{"role":"user","content":"a b"}],"stream":true,"stream_options":{"include_usage":true}}`, false, false, 10},
	}
	for _, c := range cases {
		s := start(t, c.cfg)
		status, body := post(t, s, "/v1/chat/completions", c.body)
		evs := events(t, body)
		if status != 200 || evs[len(evs)-1] != "[DONE]" {
			t.Fatalf("%s: %d %s", c.name, status, body)
		}
		var usageChunk struct {
			Choices []any  `json:"choices"`
			Usage   *usage `json:"usage"`
		}
		json.Unmarshal([]byte(evs[len(evs)-2]), &usageChunk)
		gotUsage := usageChunk.Usage != nil && len(usageChunk.Choices) == 0
		if gotUsage != c.usage || bytes.Contains(body, []byte(`"timings"`)) != c.timings {
			t.Fatalf("%s: usage %v timings %v: %s", c.name, gotUsage, !c.timings, body)
		}
		if c.usage && (usageChunk.Usage.PromptTokens != 2+PerMessageTokens || usageChunk.Usage.CompletionTokens != c.contentLen) {
			t.Fatalf("%s: usage %+v", c.name, usageChunk.Usage)
		}
		var text strings.Builder
		for _, ev := range evs[:len(evs)-1] {
			var ch struct {
				Choices []struct {
					Delta struct {
						Content string `json:"content"`
					} `json:"delta"`
				} `json:"choices"`
			}
			json.Unmarshal([]byte(ev), &ch)
			if len(ch.Choices) > 0 {
				text.WriteString(ch.Choices[0].Delta.Content)
			}
		}
		if text.String() != ReplyText(c.contentLen) {
			t.Fatalf("%s: text %q", c.name, text.String())
		}
		if cn := s.Counters(); cn.Completed != 1 || cn.CompletionTokens != int64(c.contentLen) || (cn.Reported == 1) != (c.usage || c.timings) {
			t.Fatalf("%s: counters %+v", c.name, cn)
		}
	}
}

func TestNonStreamToolsEmbeddingsRerankModels(t *testing.T) {
	s := start(t, Config{Flavor: LlamaCpp, Models: append(DefaultModels(), Model{ID: "cold", Status: "unloaded"})})
	status, body := post(t, s, "/v1/chat/completions", `{"model":"tiny","messages":[{"role":"user","content":"x"}],"tools":[{"type":"function","function":{"name":"f","parameters":{"type":"object","properties":{"n":{"type":"number"}}}}}]}`)
	var rep struct {
		Choices []struct {
			Message struct {
				ToolCalls []toolCall `json:"tool_calls"`
			} `json:"message"`
			FinishReason string `json:"finish_reason"`
		} `json:"choices"`
		Usage   usage    `json:"usage"`
		Timings *timings `json:"timings"`
	}
	if json.Unmarshal(body, &rep); status != 200 || rep.Choices[0].FinishReason != "tool_calls" || rep.Choices[0].Message.ToolCalls[0].Function.Arguments != `{"n":1}` || rep.Usage.CompletionTokens != ToolCallTokens || rep.Timings == nil {
		t.Fatalf("tools: %d %s", status, body)
	}
	status, body = post(t, s, "/v1/embeddings", `{"model":"tiny-embed","input":["a","b c"]}`)
	var emb struct {
		Data []struct {
			Index     int       `json:"index"`
			Embedding []float32 `json:"embedding"`
		} `json:"data"`
		Usage usage `json:"usage"`
	}
	if json.Unmarshal(body, &emb); status != 200 || len(emb.Data) != 2 || emb.Data[1].Embedding[0] != Embedding("b c", 16)[0] || emb.Usage.PromptTokens != 3+2*PerMessageTokens {
		t.Fatalf("embeddings: %d %s", status, body)
	}
	if status, _ := post(t, s, "/v1/rerank", `{"model":"tiny","query":"q","documents":["a"]}`); status != 501 {
		t.Fatalf("rerank on a model without it: %d", status)
	}
	if status, body := post(t, s, "/v1/rerank", `{"model":"tiny-rerank","query":"q","documents":["a","b","c"],"top_n":2}`); status != 200 || !bytes.Contains(body, []byte(`"relevance_score"`)) {
		t.Fatalf("rerank: %d %s", status, body)
	}
	resp, err := http.Get(s.URL() + "/v1/models")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !bytes.Contains(b, []byte(`"id":"cold","object":"model","created":1700000000,"owned_by":"llamacpp","status":{"value":"unloaded"}`)) {
		t.Fatalf("models: %s", b)
	}
	// embeddings "a", "b c"; rerank query "q" and three one-word documents
	if c := s.Counters(); c.EmbedTokens != (1+PerMessageTokens)+(2+PerMessageTokens)+4*(1+PerMessageTokens) {
		t.Fatalf("embed tokens %+v", c)
	}
}

func TestFaultsAndErrors(t *testing.T) {
	s := start(t, Config{APIKey: "k"})
	req := func(body string, auth bool) (int, []byte) {
		r, _ := http.NewRequest(http.MethodPost, s.URL()+"/v1/chat/completions", strings.NewReader(body))
		if auth {
			r.Header.Set("Authorization", "Bearer k")
		}
		resp, err := http.DefaultClient.Do(r)
		if err != nil {
			return 0, nil
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, b
	}
	if status, _ := req(`{"model":"tiny"}`, false); status != 401 {
		t.Fatalf("no key: %d", status)
	}
	if status, body := req(`{"model":"nope","messages":[]}`, true); status != 404 || !bytes.Contains(body, []byte("does not exist")) {
		t.Fatalf("unknown model: %d %s", status, body)
	}
	if status, body := req(`{"model":"tiny","messages":[],"fake":{"status":503,"error":"busy"}}`, true); status != 503 || !bytes.Contains(body, []byte(`"message":"busy"`)) {
		t.Fatalf("fault status: %d %s", status, body)
	}
	status, body := req(`{"model":"tiny","messages":[],"stream":true,"fake":{"error_after_chunks":2,"error":"dead"}}`, true)
	evs := events(t, body)
	if status != 200 || len(evs) != 5 || !strings.Contains(evs[3], `"dead"`) || evs[4] != "[DONE]" {
		t.Fatalf("error after chunks: %s", body)
	}
	r, _ := http.NewRequest(http.MethodPost, s.URL()+"/v1/chat/completions", strings.NewReader(`{"model":"tiny","messages":[],"stream":true,"fake":{"fail_after_chunks":1}}`))
	r.Header.Set("Authorization", "Bearer k")
	resp, err := http.DefaultClient.Do(r)
	if err != nil {
		t.Fatal(err)
	}
	_, err = io.ReadAll(resp.Body)
	resp.Body.Close()
	if err == nil {
		t.Fatal("cut stream read cleanly")
	}
	s.SetFailure(500, "down")
	if status, _ := req(`{"model":"tiny","messages":[]}`, true); status != 500 {
		t.Fatalf("SetFailure: %d", status)
	}
	if c := s.Counters(); c.Completed != 0 {
		t.Fatalf("failed requests counted: %+v", c)
	}
}
