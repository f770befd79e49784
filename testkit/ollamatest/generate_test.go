package ollamatest

import (
	"fmt"
	"testing"
)

func TestChatGenerateErrors(t *testing.T) {
	e := start(t, Config{Models: []Model{
		{Name: "tiny"}, {Name: "tooly", Capabilities: []Capability{CapCompletion, CapTools}},
		{Name: "emb", Capabilities: []Capability{CapEmbedding}},
	}})
	msgs := `"messages":[{"role":"user","content":"hi"}]`
	cases := []struct {
		path, body string
		status     int
		want       string
	}{
		{"/api/chat", ``, 400, `{"error":"missing request body"}`},
		{"/api/chat", `{"model":`, 400, `{"error":"unexpected EOF"}`},
		{"/api/chat", `{"model":1}`, 400, `{"error":"json: cannot unmarshal number into Go struct field ChatRequest.model of type string"}`},
		{"/api/chat", `{"model":"tiny","messages":[{"content":1}]}`, 400, `{"error":"json: cannot unmarshal number into Go struct field ChatRequest.messages.content of type string"}`},
		{"/api/chat", `{"model":"tiny","keep_alive":true}`, 400, `{"error":"Unsupported type: 'bool'"}`},
		{"/api/chat", `{}`, 400, `{"error":"model is required"}`},
		{"/api/generate", `{}`, 404, `{"error":"model '' not found"}`},
		{"/api/chat", `{"model":"nope",` + msgs + `}`, 404, `{"error":"model 'nope' not found"}`},
		{"/api/generate", `{"model":"nope","prompt":"x"}`, 404, `{"error":"model 'nope' not found"}`},
		{"/api/chat", `{"model":"tiny","tools":[{"type":"function"}],` + msgs + `}`, 400, `{"error":"registry.ollama.ai/library/tiny:latest does not support tools"}`},
		{"/api/chat", `{"model":"tiny","think":true,` + msgs + `}`, 400, `{"error":"\"tiny\" does not support thinking"}`},
		{"/api/chat", `{"model":"emb",` + msgs + `}`, 400, `{"error":"\"emb\" does not support chat"}`},
		{"/api/generate", `{"model":"emb","prompt":"x"}`, 400, `{"error":"\"emb\" does not support generate"}`},
		{"/api/chat", `{"model":"tiny","options":{"num_predict":"x"},` + msgs + `}`, 500, `{"error":"option \"num_predict\" must be of type integer"}`},
		// Type errors name Ollama's types, not the fake's (found against real Ollama).
		{"/api/chat", `{"model":"tiny","messages":"hi"}`, 400, `{"error":"json: cannot unmarshal string into Go struct field ChatRequest.messages of type []api.Message"}`},
		{"/api/generate", `{"model":"tiny","prompt":"a","options":[1]}`, 400, `{"error":"json: cannot unmarshal array into Go struct field GenerateRequest.options of type map[string]interface {}"}`},
	}
	for _, c := range cases {
		r := e.post(c.path, c.body)
		if r.status != c.status || string(r.body) != c.want || r.ctype != "application/json; charset=utf-8" {
			t.Errorf("POST %s %s = %d %q %s; want %d %s", c.path, c.body, r.status, r.ctype, r.body, c.status, c.want)
		}
	}
	if r := e.post("/api/chat", `{"model":"tooly","stream":false,"tools":[{"type":"function"}],`+msgs+`}`); r.status != 200 {
		t.Errorf("tools on a tools model = %d %s", r.status, r.body)
	}
}

func TestStreamShapeAndCounts(t *testing.T) {
	e := start(t, Config{Chunks: 5})
	cases := []struct {
		name, path, body  string
		chunks, prompt    int
		doneReason, field string
	}{
		{"chat default", "/api/chat", `{"model":"tiny","messages":[{"role":"system","content":"be brief"},{"role":"user","content":"hello there you"}]}`, 5, 2 + 4 + 3 + 4, "stop", "message"},
		{"chat num_predict", "/api/chat", `{"model":"tiny","messages":[{"role":"user","content":"x"}],"options":{"num_predict":3}}`, 3, 5, "length", "message"},
		{"generate", "/api/generate", `{"model":"tiny","prompt":"one two three"}`, 5, 7, "stop", "response"},
		{"generate system", "/api/generate", `{"model":"tiny","prompt":"a","system":"b c"}`, 5, 5 + 6, "stop", "response"},
		{"fault chunks", "/api/generate", `{"model":"tiny","prompt":"a","fake":{"chunks":7}}`, 7, 5, "stop", "response"},
	}
	var wantPrompt, wantEval int64
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := e.post(c.path, c.body)
			if r.status != 200 || r.ctype != "application/x-ndjson" {
				t.Fatalf("= %d %q %s", r.status, r.ctype, r.body)
			}
			ls := lines(t, r.body)
			if len(ls) != c.chunks+1 {
				t.Fatalf("%d lines, want %d", len(ls), c.chunks+1)
			}
			for _, l := range ls[:c.chunks] {
				if l["done"] != false || l[c.field] == nil || l["model"] != "tiny" || l["created_at"] == nil {
					t.Fatalf("chunk %v", l)
				}
			}
			last := ls[c.chunks]
			if last["done"] != true || last["done_reason"] != c.doneReason ||
				last["eval_count"] != float64(c.chunks) || last["prompt_eval_count"] != float64(c.prompt) {
				t.Fatalf("final %v", last)
			}
			for _, f := range []string{"total_duration", "load_duration", "prompt_eval_duration", "eval_duration"} {
				if v, _ := last[f].(float64); v <= 0 {
					t.Errorf("final %s = %v", f, last[f])
				}
			}
			if _, ok := last["context"]; ok != (c.field == "response") {
				t.Errorf("context present = %v", ok)
			}
			wantPrompt += int64(c.prompt)
			wantEval += int64(c.chunks)
		})
	}
	got := e.s.Counters()
	if got.PromptEvalCount != wantPrompt || got.EvalCount != wantEval || got.Completed != int64(len(cases)) {
		t.Errorf("Counters = %+v, want prompt %d eval %d", got, wantPrompt, wantEval)
	}
}

func TestNonStreamAndLoad(t *testing.T) {
	e := start(t, Config{Chunks: 3})
	r := e.post("/api/chat", `{"model":"tiny","stream":false,"messages":[{"role":"user","content":"x"}]}`)
	m := obj(t, r.body)
	msg, _ := m["message"].(map[string]any)
	if r.ctype != "application/json; charset=utf-8" || msg["content"] != ReplyText(3) || m["done"] != true || m["eval_count"] != 3.0 {
		t.Fatalf("non-stream chat = %q %s", r.ctype, r.body)
	}
	if got := e.s.Loaded(); fmt.Sprint(got) != "[tiny:latest]" {
		t.Fatalf("Loaded = %v", got)
	}
	cases := []struct{ path, body, reason string }{
		{"/api/chat", `{"model":"tiny","keep_alive":0}`, "unload"},
		{"/api/generate", `{"model":"tiny2"}`, "load"},
		{"/api/chat", `{"model":"tiny-fixed","messages":[]}`, "load"},
		{"/api/generate", `{"model":"tiny2","keep_alive":0}`, "unload"},
	}
	for _, c := range cases {
		m := obj(t, e.post(c.path, c.body).body)
		if m["done_reason"] != c.reason || m["done"] != true {
			t.Errorf("%s %s = %v", c.path, c.body, m)
		}
	}
	if got := e.s.Loaded(); fmt.Sprint(got) != "[tiny-fixed:latest]" {
		t.Fatalf("Loaded = %v", got)
	}
	ps := obj(t, e.do("GET", "/api/ps", "").body)["models"].([]any)[0].(map[string]any)
	for _, f := range []string{"name", "model", "size", "digest", "details", "expires_at", "size_vram", "context_length"} {
		if _, ok := ps[f]; !ok {
			t.Errorf("/api/ps entry lacks %s: %v", f, ps)
		}
	}
}

func TestThinking(t *testing.T) {
	e := start(t, Config{Chunks: 4, Models: []Model{{Name: "deep", Capabilities: []Capability{CapCompletion, CapThinking}}}})
	ls := lines(t, e.post("/api/chat", `{"model":"deep","messages":[{"role":"user","content":"x"}]}`).body)
	if msg := ls[0]["message"].(map[string]any); msg["thinking"] == nil || msg["content"] != "" {
		t.Errorf("first chunk %v, want thinking", ls[0])
	}
	if msg := ls[3]["message"].(map[string]any); msg["thinking"] != nil || msg["content"] == "" {
		t.Errorf("last content chunk %v, want content", ls[3])
	}
	ls = lines(t, e.post("/api/chat", `{"model":"deep","think":false,"messages":[{"role":"user","content":"x"}]}`).body)
	if msg := ls[0]["message"].(map[string]any); msg["thinking"] != nil {
		t.Errorf("think:false chunk %v", ls[0])
	}
}
