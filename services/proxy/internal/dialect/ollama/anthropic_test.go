package ollama

import (
	"strings"
	"testing"

	"github.com/droverhq/drover/services/proxy/internal/dialect"
	"github.com/droverhq/drover/services/proxy/internal/meter"
)

// A stream as real Ollama 0.17.4 sends it: message_start's input_tokens is
// an estimate, message_delta's the real count.
const ollamaMessageStream = "event: message_start\n" +
	`data: {"type":"message_start","message":{"id":"msg_1","type":"message","role":"assistant","model":"tiny","content":[],"usage":{"input_tokens":1,"output_tokens":0}}}` + "\n\n" +
	"event: content_block_start\n" + `data: {"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}` + "\n\n" +
	"event: content_block_delta\n" + `data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"\"output_tokens\":99"}}` + "\n\n" +
	"event: content_block_stop\n" + `data: {"type":"content_block_stop","index":0}` + "\n\n" +
	"event: message_delta\n" + `data: {"type":"message_delta","delta":{"stop_reason":"max_tokens"},"usage":{"input_tokens":28,"output_tokens":3}}` + "\n\n" +
	"event: message_stop\n" + `data: {"type":"message_stop"}` + "\n\n"

func TestMessagesTokens(t *testing.T) {
	cut := strings.Index(ollamaMessageStream, "event: message_delta")
	stop := strings.Index(ollamaMessageStream, "event: message_stop")
	cases := []struct {
		name     string
		stream   bool
		body     string
		in, out  int64 // -1: unknown
		complete bool
	}{
		{"message", false, `{"id":"msg_1","type":"message","role":"assistant","model":"tiny","content":[{"type":"tool_use","id":"c","name":"f","input":{"output_tokens":9}}],"stop_reason":"tool_use","usage":{"input_tokens":28,"output_tokens":5}}`, 28, 5, false},
		{"message without usage", false, `{"type":"message","content":[]}`, -1, -1, false},
		{"whole stream: message_delta's real input count", true, ollamaMessageStream, 28, 3, true},
		{"stream cut before message_delta", true, ollamaMessageStream[:cut], -1, -1, false},
		{"stream cut before message_stop: counted, not complete", true, ollamaMessageStream[:stop], 28, 3, false},
		{"Anthropic's own stream: input only in message_start", true, strings.Replace(ollamaMessageStream, `"usage":{"input_tokens":28,"output_tokens":3}`, `"usage":{"output_tokens":3}`, 1), 1, 3, true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			x, err := Dialect{}.Exchange(dialect.Call{Route: MessagesRoute, Body: []byte(`{"model":"tiny"}`), Model: "tiny", Target: "tiny", Stream: c.stream})
			if err != nil || x.Tokens == nil || x.Path != MessagesRoute || string(x.Body) != `{"model":"tiny"}` {
				t.Fatalf("exchange %+v, %v", x, err)
			}
			var m meter.Meter
			m.Write([]byte(c.body)) //nolint:errcheck
			in, out := x.Tokens(&m)
			if got := val(in); got != c.in {
				t.Errorf("input tokens %d, want %d", got, c.in)
			}
			if got := val(out); got != c.out {
				t.Errorf("output tokens %d, want %d", got, c.out)
			}
			if complete := x.Complete != nil && x.Complete(&m); complete != c.complete {
				t.Errorf("complete %v, want %v", complete, c.complete)
			}
		})
	}
	if !(Dialect{}).Serves(MessagesRoute) {
		t.Error("Ollama serves /v1/messages")
	}
}

func val(p *int64) int64 {
	if p == nil {
		return -1
	}
	return *p
}
