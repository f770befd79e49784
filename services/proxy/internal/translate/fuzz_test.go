package translate

import (
	"bytes"
	"encoding/json"
	"net/http"
	"testing"
	"time"

	"github.com/droverhq/drover/services/proxy/internal/sse"
)

// Ollama's and Anthropic's requests into OpenAI's: whatever the client
// sent, a translation is an error or a JSON body for a known path.
func FuzzRequests(f *testing.F) {
	f.Add(uint8(0), []byte(`{"model":"m","messages":[{"role":"user","content":"hi","images":["R0lGODlhAQABAAAAACw="]}],"options":{"temperature":0.5,"num_predict":8},"format":"json","tools":[{"type":"function","function":{"name":"f"}}]}`))
	f.Add(uint8(1), []byte(`{"model":"m","prompt":"def f(","suffix":"return 1","stream":false,"raw":true,"think":false}`))
	f.Add(uint8(2), []byte(`{"model":"m","input":["a","b"],"dimensions":8,"truncate":true}`))
	f.Add(uint8(3), []byte(`{"model":"m","prompt":"x"}`))
	f.Add(uint8(4), []byte(`{"model":"m","max_tokens":10,"system":[{"type":"text","text":"s"}],"messages":[{"role":"user","content":[{"type":"image","source":{"type":"base64","media_type":"image/png","data":"AAAA"}},{"type":"tool_result","tool_use_id":"t","content":[{"type":"text","text":"r"}]}]},{"role":"assistant","content":[{"type":"tool_use","id":"t","name":"f","input":{"a":1}}]}],"stop_sequences":["x"],"thinking":{"type":"disabled"}}`))
	f.Fuzz(func(t *testing.T, kind uint8, body []byte) {
		var path string
		var out []byte
		var err error
		switch kind % 5 {
		case 0:
			var r Request
			r, err = ChatRequest(body, "bm")
			path, out = r.Path, r.Body
		case 1:
			var r Request
			r, err = GenerateRequest(body, "bm")
			path, out = r.Path, r.Body
		case 2:
			var r Request
			r, err = EmbedRequest(body, "bm")
			path, out = r.Path, r.Body
		case 3:
			var r Request
			r, err = EmbeddingsRequest(body, "bm")
			path, out = r.Path, r.Body
		case 4:
			var m Messages
			m, err = MessagesRequest(body, "bm")
			path, out = m.Path, m.Body
		}
		if err != nil {
			return
		}
		if !json.Valid(out) || path == "" {
			t.Fatalf("%q from %s: %s", path, body, out)
		}
	})
}

// OpenAI's answers into Ollama's NDJSON or JSON and Anthropic's events or
// JSON: whatever a backend sends, split anywhere, the client gets JSON
// lines (a stream), SSE events with JSON data (Anthropic's stream) or one
// JSON document, and the filters fail only on an event over the bound.
func FuzzResponses(f *testing.F) {
	stream := []byte("data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hel\"}}]}\n\n" +
		"data: {\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"id\":\"c1\",\"function\":{\"name\":\"f\",\"arguments\":\"{\\\"a\\\"\"}}]}}]}\n\n" +
		"data: {\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\":1}\"}}]},\"finish_reason\":\"tool_calls\"}],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":2}}\n\n" +
		"data: [DONE]\n\n")
	whole := []byte(`{"choices":[{"index":0,"message":{"role":"assistant","content":"hi","reasoning_content":"r","tool_calls":[{"id":"c","function":{"name":"f","arguments":"{}"}}]},"finish_reason":"stop"}],"usage":{"prompt_tokens":3,"completion_tokens":1}}`)
	f.Add(uint8(0), true, uint16(200), stream, uint16(7))
	f.Add(uint8(0), false, uint16(200), whole, uint16(5))
	f.Add(uint8(1), true, uint16(200), []byte("data: {\"choices\":[{\"index\":0,\"text\":\"x\",\"finish_reason\":\"length\"}]}\n\ndata: [DONE]\n\n"), uint16(1))
	f.Add(uint8(2), false, uint16(200), []byte(`{"data":[{"embedding":[0.1,0.2]}],"usage":{"prompt_tokens":2}}`), uint16(3))
	f.Add(uint8(4), true, uint16(200), stream, uint16(11))
	f.Add(uint8(4), false, uint16(200), whole, uint16(64))
	f.Add(uint8(0), true, uint16(500), []byte(`{"error":{"message":"boom"}}`), uint16(2))
	f.Add(uint8(4), true, uint16(200), []byte("data: {\"error\":{\"message\":\"mid-stream\"}}\n\n"), uint16(4))
	f.Fuzz(func(t *testing.T, kind uint8, streamed bool, status uint16, body []byte, split uint16) {
		sse.SetMaxEvent(4096)
		defer sse.SetMaxEvent(sse.DefaultMaxEvent)
		code := 200
		if status%4 == 1 {
			code = 400 + int(status%200)
		}
		size := int(split)%97 + 1
		var out bytes.Buffer
		h := http.Header{}
		var w interface {
			Write([]byte) (int, error)
			Close() error
		}
		anthropic := kind%5 == 4
		if anthropic {
			w = MessagesResponse(Messages{Path: "/v1/chat/completions", Stream: streamed, Think: true}, "pub", code, h, &out)
		} else {
			w = Response(Request{Kind: Kind(kind % 4), Stream: streamed, Think: true}, "pub", time.Now(), code, h, &out)
		}
		var err error
		for i := 0; i < len(body) && err == nil; i += size {
			_, err = w.Write(body[i:min(i+size, len(body))])
		}
		if err == nil {
			err = w.Close()
		}
		if err != nil {
			if len(body) <= 4096 {
				t.Fatalf("a %d-byte answer failed: %v", len(body), err)
			}
			return
		}
		ct := h.Get("Content-Type")
		switch {
		case ct == "text/event-stream":
			for _, ev := range splitEvents(out.Bytes()) {
				if d := sse.EventData(ev); len(d) > 0 && !json.Valid(d) {
					t.Fatalf("event data %q is not JSON (from %q)", d, body)
				}
			}
		case ct == "application/x-ndjson":
			for _, line := range bytes.Split(bytes.TrimSuffix(out.Bytes(), []byte("\n")), []byte("\n")) {
				if len(line) > 0 && !json.Valid(line) {
					t.Fatalf("NDJSON line %q is not JSON (from %q)", line, body)
				}
			}
		default:
			if out.Len() > 0 && !json.Valid(out.Bytes()) {
				t.Fatalf("%s answer %q is not JSON (from %q)", ct, out.Bytes(), body)
			}
		}
	})
}

func splitEvents(b []byte) [][]byte {
	var out [][]byte
	for _, ev := range bytes.Split(b, []byte("\n\n")) {
		if len(bytes.TrimSpace(ev)) > 0 {
			out = append(out, ev)
		}
	}
	return out
}
