package workload

import (
	"strings"
	"testing"
)

func TestValidators(t *testing.T) {
	chunk := `{"model":"tiny","created_at":"2024-01-01T00:00:00Z","message":{"role":"assistant","content":"x"},"done":false}`
	final := `{"model":"tiny","created_at":"2024-01-01T00:00:00Z","message":{"role":"assistant","content":""},"done":true,"prompt_eval_count":3,"eval_count":20}`
	cases := []struct {
		workload string
		body     string
		ok       bool
	}{
		{"chat", final, true},
		{"chat", final + "\n", true},
		{"chat", chunk, false},
		{"chat", `{"error":"model not found"}`, false},
		{"chat", `not json`, false},
		{"chat-stream", chunk + "\n" + chunk + "\n" + final + "\n", true},
		{"chat-stream", chunk + "\n" + chunk + "\n", false},
		{"chat-stream", chunk + "\n" + `{"error":"boom"}` + "\n", false},
		{"chat-stream", "", false},
		{"chat-stream", chunk + "\n" + `{"done":tr`, false},
		{"openai-chat", `{"id":"x","choices":[{"index":0,"message":{"role":"assistant","content":"hi"}}]}`, true},
		{"openai-chat", `{"error":{"message":"model not found"}}`, false},
		{"openai-chat", `{"choices":[]}`, false},
		{"openai-chat", `nope`, false},
		{"openai-stream", "data: {\"choices\":[]}\n\ndata: [DONE]\n\n", true},
		{"openai-stream", "data: {\"choices\":[]}\n\n", false},
		{"openai-stream", "", false},
	}
	for _, c := range cases {
		ws, err := Select(c.workload)
		if err != nil {
			t.Fatal(err)
		}
		err = ws[0].Validate([]byte(c.body))
		if (err == nil) != c.ok {
			t.Errorf("%s %q: got err=%v, want ok=%v", c.workload, c.body, err, c.ok)
		}
	}
}

func TestSelect(t *testing.T) {
	ws, err := Select("chat-stream, chat,chat")
	if err != nil {
		t.Fatal(err)
	}
	if len(ws) != 2 || ws[0].Name != "chat-stream" || ws[1].Name != "chat" {
		t.Fatalf("got %v", ws)
	}
	all, err := Select("all")
	if err != nil || len(all) != len(Names()) {
		t.Fatalf("all: %v %v", all, err)
	}
	if _, err := Select("chat,nope"); err == nil || !strings.Contains(err.Error(), "nope") {
		t.Fatalf("unknown workload: err=%v", err)
	}
	if _, err := Select(Default); err != nil {
		t.Fatal(err)
	}
}
