package translate

import (
	"bytes"
	"encoding/json"
	"net/http"
	"reflect"
	"regexp"
	"strings"
	"testing"
)

func TestMessagesRequest(t *testing.T) {
	const user = `{"role":"user","content":"hi"}`
	cases := []struct {
		name, in string
		want     map[string]any // fields of the translated body, compared as JSON
	}{
		{"text, max_tokens, no stream", `{"model":"m","max_tokens":5,"messages":[` + user + `]}`,
			map[string]any{"model": "backend-m", "max_tokens": 5, "stream": false,
				"messages": []any{map[string]any{"role": "user", "content": "hi"}}}},
		{"stream asks for usage", `{"model":"m","max_tokens":5,"stream":true,"messages":[` + user + `]}`,
			map[string]any{"stream": true, "stream_options": map[string]any{"include_usage": true}}},
		{"system string", `{"model":"m","max_tokens":1,"system":"be brief","messages":[` + user + `]}`,
			map[string]any{"messages": []any{map[string]any{"role": "system", "content": "be brief"}, map[string]any{"role": "user", "content": "hi"}}}},
		{"system blocks joined", `{"model":"m","max_tokens":1,"system":[{"type":"text","text":"be "},{"type":"text","text":"brief"}],"messages":[` + user + `]}`,
			map[string]any{"messages": []any{map[string]any{"role": "system", "content": "be brief"}, map[string]any{"role": "user", "content": "hi"}}}},
		{"text blocks joined, both roles", `{"model":"m","max_tokens":1,"messages":[{"role":"user","content":[{"type":"text","text":"a"},{"type":"text","text":"b"}]},{"role":"assistant","content":[{"type":"text","text":"c"}]}]}`,
			map[string]any{"messages": []any{map[string]any{"role": "user", "content": "ab"}, map[string]any{"role": "assistant", "content": "c"}}}},
		{"sampling and stop sequences", `{"model":"m","max_tokens":1,"temperature":0.5,"top_p":0.9,"top_k":40,"stop_sequences":["END"],"messages":[` + user + `]}`,
			map[string]any{"temperature": 0.5, "top_p": 0.9, "top_k": 40, "stop": []any{"END"}}},
		{"base64 image as a data URL, in order", `{"model":"m","max_tokens":1,"messages":[{"role":"user","content":[{"type":"text","text":"what is"},{"type":"text","text":""},{"type":"image","source":{"type":"base64","media_type":"image/jpeg","data":"aGk="}}]}]}`,
			map[string]any{"messages": []any{map[string]any{"role": "user", "content": []any{
				map[string]any{"type": "text", "text": "what is"},
				map[string]any{"type": "image_url", "image_url": map[string]any{"url": "data:image/jpeg;base64,aGk="}}}}}}},
		{"url image as it is", `{"model":"m","max_tokens":1,"messages":[{"role":"user","content":[{"type":"image","source":{"type":"url","url":"https://x/y.png"}}]}]}`,
			map[string]any{"messages": []any{map[string]any{"role": "user", "content": []any{
				map[string]any{"type": "image_url", "image_url": map[string]any{"url": "https://x/y.png"}}}}}}},
		{"tools", `{"model":"m","max_tokens":1,"tools":[{"name":"get_weather","description":"the weather","input_schema":{"type":"object","properties":{"city":{"type":"string"}}}}],"messages":[` + user + `]}`,
			map[string]any{"tools": []any{map[string]any{"type": "function", "function": map[string]any{"name": "get_weather", "description": "the weather",
				"parameters": map[string]any{"type": "object", "properties": map[string]any{"city": map[string]any{"type": "string"}}}}}}}},
		{"tool_choice any, no parallel calls", `{"model":"m","max_tokens":1,"tools":[{"name":"f","input_schema":{}}],"tool_choice":{"type":"any","disable_parallel_tool_use":true},"messages":[` + user + `]}`,
			map[string]any{"tool_choice": "required", "parallel_tool_calls": false}},
		{"tool_choice tool", `{"model":"m","max_tokens":1,"tools":[{"name":"f","input_schema":{}}],"tool_choice":{"type":"tool","name":"f"},"messages":[` + user + `]}`,
			map[string]any{"tool_choice": map[string]any{"type": "function", "function": map[string]any{"name": "f"}}}},
		{"tool_choice none", `{"model":"m","max_tokens":1,"tools":[{"name":"f","input_schema":{}}],"tool_choice":{"type":"none"},"messages":[` + user + `]}`,
			map[string]any{"tool_choice": "none"}},
		{"tool use and its result", `{"model":"m","max_tokens":1,"messages":[` + user + `,
			{"role":"assistant","content":[{"type":"text","text":"let me see"},{"type":"tool_use","id":"call_1","name":"get_weather","input":{"city":"Paris"}}]},
			{"role":"user","content":[{"type":"tool_result","tool_use_id":"call_1","content":[{"type":"text","text":"sunny"}]},{"type":"text","text":"and so?"}]}]}`,
			map[string]any{"messages": []any{
				map[string]any{"role": "user", "content": "hi"},
				map[string]any{"role": "assistant", "content": "let me see", "tool_calls": []any{map[string]any{"id": "call_1", "type": "function", "function": map[string]any{"name": "get_weather", "arguments": `{"city":"Paris"}`}}}},
				map[string]any{"role": "tool", "content": "sunny", "tool_call_id": "call_1"},
				map[string]any{"role": "user", "content": "and so?"}}}},
		{"a call without text has null content", `{"model":"m","max_tokens":1,"messages":[{"role":"assistant","content":[{"type":"tool_use","id":"c","name":"f","input":{}}]},{"role":"user","content":[{"type":"tool_result","tool_use_id":"c","content":"ok"}]}]}`,
			map[string]any{"messages": []any{
				map[string]any{"role": "assistant", "content": nil, "tool_calls": []any{map[string]any{"id": "c", "type": "function", "function": map[string]any{"name": "f", "arguments": `{}`}}}},
				map[string]any{"role": "tool", "content": "ok", "tool_call_id": "c"}}}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			m, err := MessagesRequest([]byte(c.in), "backend-m")
			if err != nil {
				t.Fatal(err)
			}
			if m.Path != "/v1/chat/completions" {
				t.Errorf("path %s", m.Path)
			}
			var got map[string]any
			if err := json.Unmarshal(m.Body, &got); err != nil {
				t.Fatal(err)
			}
			for k, want := range c.want {
				w, _ := json.Marshal(want)
				g, _ := json.Marshal(got[k])
				if !bytes.Equal(w, g) {
					t.Errorf("%s: got %s, want %s", k, g, w)
				}
			}
		})
	}
}

// Requests Ollama refuses are refused with its words.
func TestMessagesRequestErrors(t *testing.T) {
	for _, c := range []struct{ in, want string }{
		{`{"messages":[{"role":"user","content":5}]}`, "invalid message content type: float64"},
		{`{"messages":[{"role":"user","content":["x"]}]}`, "invalid content block format"},
		{`{"messages":[{"role":"user","content":[{"type":"image"}]}]}`, "invalid image source"},
		{`{"messages":[{"role":"user","content":[{"type":"image","source":{"type":"base64","data":"!!"}}]}]}`, "invalid base64 image data: illegal base64 data at input byte 0"},
		{`{"messages":[{"role":"assistant","content":[{"type":"tool_use","name":"f"}]}]}`, "tool_use block missing required 'id' field"},
		{`{"messages":[{"role":"assistant","content":[{"type":"tool_use","id":"c"}]}]}`, "tool_use block missing required 'name' field"},
		{`{"tools":[{"type":"web_search_20250305","name":"web_search"}],"messages":[]}`, `tool type "web_search_20250305" is not supported for this model`},
	} {
		if _, err := MessagesRequest([]byte(c.in), "m"); err == nil || err.Error() != c.want {
			t.Errorf("%s: %v, want %q", c.in, err, c.want)
		}
	}
}

// feedMessages writes body to m's translation n bytes at a time.
func feedMessages(t *testing.T, m Messages, status int, body string, n int) (string, http.Header) {
	t.Helper()
	var out bytes.Buffer
	h := http.Header{}
	w := MessagesResponse(m, "pub", status, h, &out)
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

var msgID = regexp.MustCompile(`"msg_[0-9a-f]{24}"`)

func TestMessagesWholeResponse(t *testing.T) {
	const usage = `"usage":{"prompt_tokens":7,"completion_tokens":3,"total_tokens":10}`
	cases := []struct {
		name, body string
		stop       []string
		want       string
	}{
		{"text, stop", `{"choices":[{"index":0,"message":{"role":"assistant","content":"hi"},"finish_reason":"stop"}],` + usage + `}`, nil,
			`{"id":"msg","type":"message","role":"assistant","model":"pub","content":[{"type":"text","text":"hi"}],"stop_reason":"end_turn","usage":{"input_tokens":7,"output_tokens":3}}`},
		{"length", `{"choices":[{"index":0,"message":{"content":"hi"},"finish_reason":"length"}],` + usage + `}`, nil,
			`{"id":"msg","type":"message","role":"assistant","model":"pub","content":[{"type":"text","text":"hi"}],"stop_reason":"max_tokens","usage":{"input_tokens":7,"output_tokens":3}}`},
		{"vLLM's matched stop sequence", `{"choices":[{"index":0,"message":{"content":"hi"},"finish_reason":"stop","stop_reason":"END"}],` + usage + `}`, []string{"END"},
			`{"id":"msg","type":"message","role":"assistant","model":"pub","content":[{"type":"text","text":"hi"}],"stop_reason":"stop_sequence","stop_sequence":"END","usage":{"input_tokens":7,"output_tokens":3}}`},
		{"tool calls with parsed input, reasoning as thinking", `{"choices":[{"index":0,"message":{"reasoning_content":"hmm","content":"","tool_calls":[{"id":"c1","type":"function","function":{"name":"f","arguments":"{\"a\":1}"}},{"id":"c2","type":"function","function":{"name":"g","arguments":"not json"}}]},"finish_reason":"tool_calls"}],` + usage + `}`, nil,
			`{"id":"msg","type":"message","role":"assistant","model":"pub","content":[{"type":"thinking","thinking":"hmm"},{"type":"tool_use","id":"c1","name":"f","input":{"a":1}},{"type":"tool_use","id":"c2","name":"g","input":{}}],"stop_reason":"tool_use","usage":{"input_tokens":7,"output_tokens":3}}`},
		{"llama.cpp's timings", `{"choices":[{"index":0,"message":{"content":"hi"},"finish_reason":"stop"}],"timings":{"prompt_n":5,"cache_n":2,"predicted_n":4}}`, nil,
			`{"id":"msg","type":"message","role":"assistant","model":"pub","content":[{"type":"text","text":"hi"}],"stop_reason":"end_turn","usage":{"input_tokens":7,"output_tokens":4}}`},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, h := feedMessages(t, Messages{Stop: c.stop, Think: true}, 200, c.body, 3)
			if h.Get("Content-Type") != "application/json" || !strings.HasSuffix(got, "}\n") {
				t.Errorf("framing: %q %q", h.Get("Content-Type"), got)
			}
			if got = msgID.ReplaceAllString(strings.TrimSpace(got), `"msg"`); got != c.want {
				t.Errorf("got\n%s\nwant\n%s", got, c.want)
			}
		})
	}
}

func TestMessagesErrorResponse(t *testing.T) {
	for _, c := range []struct {
		status    int
		body, typ string
	}{
		{400, `{"error":{"message":"bad things","type":"BadRequestError","param":null,"code":400}}`, "invalid_request_error"},
		{404, `{"error":{"message":"bad things","type":"NotFoundError","code":404}}`, "not_found_error"},
		{429, `{"error":"bad things"}`, "rate_limit_error"},
		{500, `bad things`, "api_error"},
	} {
		got, h := feedMessages(t, Messages{Stream: true}, c.status, c.body, 1)
		var e struct {
			Type  string `json:"type"`
			Error struct {
				Type, Message string
			} `json:"error"`
			RequestID string `json:"request_id"`
		}
		if err := json.Unmarshal([]byte(got), &e); err != nil || e.Type != "error" || e.Error.Type != c.typ || e.Error.Message != "bad things" ||
			!strings.HasPrefix(e.RequestID, "req_") || h.Get("Content-Type") != "application/json" {
			t.Errorf("%d: %s %v", c.status, got, h)
		}
	}
}

const openAIStream = `data: {"choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}

data: {"choices":[{"index":0,"delta":{"reasoning_content":"think"}}]}

data: {"choices":[{"index":0,"delta":{"content":"Hel"}}]}

data: {"choices":[{"index":0,"delta":{"content":"lo"}}]}

data: {"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"c1","type":"function","function":{"name":"f","arguments":""}}]}}]}

data: {"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\"a\":"}}]}}]}

data: {"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"1}"}}]}}]}

data: {"choices":[{"index":0,"delta":{},"finish_reason":"tool_calls"}]}

data: {"choices":[],"usage":{"prompt_tokens":7,"completion_tokens":3,"total_tokens":10}}

data: [DONE]

`

// The events Ollama's StreamConverter sends for the same answer.
const messagesEvents = `event: message_start
data: {"type":"message_start","message":{"id":"msg","type":"message","role":"assistant","model":"pub","content":[],"usage":{"input_tokens":9,"output_tokens":0}}}

event: content_block_start
data: {"type":"content_block_start","index":0,"content_block":{"type":"thinking","thinking":""}}

event: content_block_delta
data: {"type":"content_block_delta","index":0,"delta":{"type":"thinking_delta","thinking":"think"}}

event: content_block_stop
data: {"type":"content_block_stop","index":0}

event: content_block_start
data: {"type":"content_block_start","index":1,"content_block":{"type":"text","text":""}}

event: content_block_delta
data: {"type":"content_block_delta","index":1,"delta":{"type":"text_delta","text":"Hel"}}

event: content_block_delta
data: {"type":"content_block_delta","index":1,"delta":{"type":"text_delta","text":"lo"}}

event: content_block_stop
data: {"type":"content_block_stop","index":1}

event: content_block_start
data: {"type":"content_block_start","index":2,"content_block":{"type":"tool_use","id":"c1","name":"f","input":{}}}

event: content_block_delta
data: {"type":"content_block_delta","index":2,"delta":{"type":"input_json_delta","partial_json":"{\"a\":1}"}}

event: content_block_stop
data: {"type":"content_block_stop","index":2}

event: message_delta
data: {"type":"message_delta","delta":{"stop_reason":"tool_use"},"usage":{"input_tokens":7,"output_tokens":3}}

event: message_stop
data: {"type":"message_stop"}

`

// The stream is the same whatever the reads' boundaries, one byte at a
// time included.
func TestMessagesStream(t *testing.T) {
	for _, n := range []int{1, 2, 7, 64, len(openAIStream)} {
		got, h := feedMessages(t, Messages{Stream: true, Think: true, Estimate: 9}, 200, openAIStream, n)
		if got = msgID.ReplaceAllString(got, `"msg"`); got != messagesEvents {
			t.Fatalf("%d bytes at a time: got\n%s", n, got)
		}
		if h.Get("Content-Type") != "text/event-stream" {
			t.Errorf("content type %q", h.Get("Content-Type"))
		}
	}
	// Thinking turned off: the reasoning is dropped, the text is block 0.
	got, _ := feedMessages(t, Messages{Stream: true, Think: false}, 200, openAIStream, 5)
	if strings.Contains(got, "thinking") || !strings.Contains(got, `"index":0,"content_block":{"type":"text"`) {
		t.Errorf("thinking off:\n%s", got)
	}
}

func TestMessagesStreamStopReasons(t *testing.T) {
	const usage = "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":2,\"completion_tokens\":1}}\n\n"
	for _, c := range []struct {
		name, finish, stopReason, want string
	}{
		{"stop", `"stop"`, ``, `{"stop_reason":"end_turn"}`},
		{"length", `"length"`, ``, `{"stop_reason":"max_tokens"}`},
		{"stop sequence", `"stop"`, `,"stop_reason":"END"`, `{"stop_reason":"stop_sequence","stop_sequence":"END"}`},
		{"content filter", `"content_filter"`, ``, `{"stop_reason":"refusal"}`},
	} {
		body := `data: {"choices":[{"index":0,"delta":{"content":"x"}}]}` + "\n\n" +
			`data: {"choices":[{"index":0,"delta":{},"finish_reason":` + c.finish + c.stopReason + `}]}` + "\n\n" + usage + "data: [DONE]\n\n"
		got, _ := feedMessages(t, Messages{Stream: true, Stop: []string{"END"}}, 200, body, 4)
		want := `data: {"type":"message_delta","delta":` + c.want + `,"usage":{"input_tokens":2,"output_tokens":1}}`
		if !strings.Contains(got, want) || !strings.HasSuffix(got, "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n") {
			t.Errorf("%s:\n%s", c.name, got)
		}
	}
}

// A stream the backend ended cleanly without [DONE] is ended all the same;
// an error chunk becomes Anthropic's error event and nothing follows it.
func TestMessagesStreamEnds(t *testing.T) {
	got, _ := feedMessages(t, Messages{Stream: true}, 200, `data: {"choices":[{"index":0,"delta":{"content":"x"},"finish_reason":"stop"}]}`+"\n\n", 3)
	if !strings.HasSuffix(got, "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n"+
		"event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"input_tokens\":0,\"output_tokens\":0}}\n\n"+
		"event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n") {
		t.Errorf("no [DONE]:\n%s", got)
	}
	got, _ = feedMessages(t, Messages{Stream: true}, 200, `data: {"choices":[{"index":0,"delta":{"content":"x"}}]}`+"\n\n"+
		`data: {"error":{"message":"engine died","type":"server_error","code":500}}`+"\n\ndata: [DONE]\n\n", 1)
	events := strings.Split(strings.TrimSpace(got), "\n\n")
	if last := events[len(events)-1]; last != `event: error`+"\n"+`data: {"type":"error","error":{"type":"api_error","message":"engine died"}}` || strings.Contains(got, "message_stop") {
		t.Errorf("error chunk:\n%s", got)
	}
}

// The whole answer and the stream say the same.
func TestMessagesWholeEqualsStream(t *testing.T) {
	whole, _ := feedMessages(t, Messages{Think: true}, 200, `{"choices":[{"index":0,"message":{"reasoning_content":"think","content":"Hello","tool_calls":[{"id":"c1","type":"function","function":{"name":"f","arguments":"{\"a\":1}"}}]},"finish_reason":"tool_calls"}],"usage":{"prompt_tokens":7,"completion_tokens":3}}`, 5)
	var w map[string]any
	if err := json.Unmarshal([]byte(whole), &w); err != nil {
		t.Fatal(err)
	}
	want := []any{
		map[string]any{"type": "thinking", "thinking": "think"},
		map[string]any{"type": "text", "text": "Hello"},
		map[string]any{"type": "tool_use", "id": "c1", "name": "f", "input": map[string]any{"a": 1.0}},
	}
	if !reflect.DeepEqual(w["content"], want) || w["stop_reason"] != "tool_use" {
		t.Errorf("%s", whole)
	}
}
