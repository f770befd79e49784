package ollamatest

import (
	"encoding/json"
	"net/http"
	"reflect"
	"strings"
	"testing"
)

// sseEvents splits an Anthropic stream into event names and their data.
func sseEvents(t *testing.T, b []byte) (names []string, data []map[string]any) {
	t.Helper()
	for _, frame := range strings.Split(strings.TrimSuffix(string(b), "\n\n"), "\n\n") {
		name, rest, ok := strings.Cut(frame, "\n")
		if !ok || !strings.HasPrefix(name, "event: ") || !strings.HasPrefix(rest, "data: ") {
			t.Fatalf("not an SSE event: %q", frame)
		}
		var d map[string]any
		if err := json.Unmarshal([]byte(rest[len("data: "):]), &d); err != nil {
			t.Fatalf("event %s: %v", name, err)
		}
		if d["type"] != name[len("event: "):] {
			t.Fatalf("event %s carries type %v", name, d["type"])
		}
		names, data = append(names, name[len("event: "):]), append(data, d)
	}
	return names, data
}

func TestMessages(t *testing.T) {
	e := start(t, Config{})
	const ask = `"messages":[{"role":"user","content":"say three words"}]`

	r := e.post("/v1/messages", `{"model":"tiny","max_tokens":3,`+ask+`}`)
	var msg struct {
		Content []map[string]any `json:"content"`
		Usage   map[string]int   `json:"usage"`
	}
	if r.status != http.StatusOK || r.ctype != "application/json" || json.Unmarshal(r.body, &msg) != nil {
		t.Fatalf("message: %d %s %s", r.status, r.ctype, r.body)
	}
	wantUsage := map[string]int{"input_tokens": 3 + PerMessageTokens, "output_tokens": 3}
	if !reflect.DeepEqual(msg.Usage, wantUsage) || len(msg.Content) != 1 || msg.Content[0]["text"] != ReplyText(3) {
		t.Errorf("message: %s", r.body)
	}
	if !strings.Contains(string(r.body), `"stop_reason":"max_tokens"`) || !strings.HasPrefix(string(r.body), `{"id":"msg_`) {
		t.Errorf("message head or stop reason: %s", r.body)
	}

	r = e.post("/v1/messages", `{"model":"tiny","max_tokens":2,"stream":true,`+ask+`}`)
	if r.status != http.StatusOK || r.ctype != "text/event-stream" {
		t.Fatalf("stream: %d %s", r.status, r.ctype)
	}
	names, data := sseEvents(t, r.body)
	want := []string{"message_start", "content_block_start", "content_block_delta", "content_block_delta", "content_block_stop", "message_delta", "message_stop"}
	if !reflect.DeepEqual(names, want) {
		t.Fatalf("events %v, want %v", names, want)
	}
	start := data[0]["message"].(map[string]any)["usage"].(map[string]any)
	end := data[5]["usage"].(map[string]any)
	// message_start carries Ollama's estimate: len("user"+"say three words")/4.
	if start["input_tokens"] != 4.0 || start["output_tokens"] != 0.0 || end["input_tokens"] != float64(3+PerMessageTokens) || end["output_tokens"] != 2.0 {
		t.Errorf("usage: start %v, delta %v", start, end)
	}

	for _, c := range []struct {
		name, body, typ string
		status          int
	}{
		{"bad JSON", `{bad`, "invalid_request_error", 400},
		{"no model", `{"max_tokens":1,` + ask + `}`, "invalid_request_error", 400},
		{"no max_tokens", `{"model":"tiny",` + ask + `}`, "invalid_request_error", 400},
		{"no messages", `{"model":"tiny","max_tokens":1,"messages":[]}`, "invalid_request_error", 400},
		{"unknown model", `{"model":"nope","max_tokens":1,` + ask + `}`, "not_found_error", 404},
		{"tools on a model without them", `{"model":"tiny","max_tokens":1,"tools":[{"name":"f"}],` + ask + `}`, "invalid_request_error", 400},
	} {
		r := e.post("/v1/messages", c.body)
		var er struct {
			Type  string `json:"type"`
			Error struct {
				Type, Message string
			} `json:"error"`
			RequestID string `json:"request_id"`
		}
		if err := json.Unmarshal(r.body, &er); err != nil || r.status != c.status || er.Type != "error" || er.Error.Type != c.typ || !strings.HasPrefix(er.RequestID, "req_") {
			t.Errorf("%s: %d %s", c.name, r.status, r.body)
		}
	}
	if r := e.do(http.MethodGet, "/v1/messages", ""); r.status != http.StatusMethodNotAllowed {
		t.Errorf("GET: %d", r.status)
	}
}

func TestMessagesToolUse(t *testing.T) {
	e := start(t, Config{})
	body := `{"model":"tiny2","max_tokens":4,"tools":[{"name":"get_weather","input_schema":{"type":"object"}}],"messages":[{"role":"user","content":"weather?"}],"fake":{"tool_call":true}`
	r := e.post("/v1/messages", body+`}`)
	if !strings.Contains(string(r.body), `"content":[{"type":"tool_use","id":"call_`) || !strings.Contains(string(r.body), `"name":"get_weather","input":{}}],"stop_reason":"tool_use"`) {
		t.Errorf("tool use message: %s", r.body)
	}
	r = e.post("/v1/messages", body+`,"stream":true}`)
	names, data := sseEvents(t, r.body)
	want := []string{"message_start", "content_block_start", "content_block_delta", "content_block_stop", "message_delta", "message_stop"}
	if !reflect.DeepEqual(names, want) || data[1]["content_block"].(map[string]any)["type"] != "tool_use" ||
		data[4]["delta"].(map[string]any)["stop_reason"] != "tool_use" {
		t.Errorf("tool use stream: %s", r.body)
	}
}
