package forward

import "testing"

// countContent counts one per chunk carrying generated text, in each
// stream format the backends send, and nothing for the rest.
func TestCountContent(t *testing.T) {
	for _, c := range []struct {
		name, chunk string
		want        int64
	}{
		{"ollama chat", `{"model":"m","created_at":"2026-12-06T10:00:00Z","message":{"role":"assistant","content":"Hel"},"done":false}` + "\n", 1},
		{"ollama thinking", `{"model":"m","message":{"role":"assistant","content":"","thinking":"hmm"},"done":false}` + "\n", 1},
		{"ollama generate", `{"model":"m","response":" world","done":false}` + "\n", 1},
		{"ollama final", `{"model":"m","message":{"role":"assistant","content":""},"done":true,"done_reason":"stop","eval_count":3}` + "\n", 0},
		{"two lines in one read", `{"message":{"content":"a"}}` + "\n" + `{"message":{"content":"b"}}` + "\n", 2},
		{"openai delta", `data: {"id":"x","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"Hi"},"finish_reason":null}]}` + "\n\n", 1},
		{"openai role chunk", `data: {"choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}` + "\n\n", 0},
		{"openai reasoning", `data: {"choices":[{"delta":{"reasoning_content":"think"}}]}` + "\n\n", 1},
		{"openai usage", `data: {"choices":[],"usage":{"prompt_tokens":5,"completion_tokens":3}}` + "\n\n", 0},
		{"openai done", "data: [DONE]\n\n", 0},
		{"completion text", `data: {"choices":[{"text":"abc","index":0}]}` + "\n\n", 1},
		{"anthropic text delta", "event: content_block_delta\n" + `data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hi"}}` + "\n\n", 1},
		{"anthropic start", "event: message_start\n" + `data: {"type":"message_start","message":{"id":"m","content":[],"usage":{"input_tokens":3}}}` + "\n\n", 0},
		{"responses delta", "event: response.output_text.delta\n" + `data: {"type":"response.output_text.delta","delta":"Hi","sequence_number":4}` + "\n\n", 1},
		{"quotes inside the text", `{"message":{"content":"he said \"a\":\"b\""}}` + "\n", 1},
		{"a model named content", `{"model":"content","message":{"content":"x"}}` + "\n", 1},
	} {
		if got := countContent([]byte(c.chunk)); got != c.want {
			t.Errorf("%s: %d, want %d", c.name, got, c.want)
		}
	}
}
