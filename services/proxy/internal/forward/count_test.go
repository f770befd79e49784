package forward

import (
	"bytes"
	"testing"
)

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

// countContent agrees with the plain reading of its rule (every `":"`
// after a content key with a non-empty string value) on the table's
// chunks joined and cut at every offset, as reads split them.
func TestCountContentAsThePlainRule(t *testing.T) {
	plain := func(p []byte) (n int64) {
		for {
			i := bytes.Index(p, []byte(`":"`))
			if i < 0 {
				return n
			}
			if v := i + 3; v < len(p) && p[v] != '"' && contentKey(p[:i]) {
				n++
			}
			p = p[i+3:]
		}
	}
	all := []byte(`{"model":"content","message":{"role":"assistant","content":"he said \"a\":\"b\""},"done":false}` + "\n" +
		`data: {"choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}` + "\n\n" +
		"event: content_block_delta\n" + `data: {"type":"content_block_delta","delta":{"type":"text_delta","text":":"}}` + "\n\n" +
		`{"a":":":"x","thinking":"t","response":""}`)
	for i := range all {
		for _, p := range [][]byte{all[:i], all[i:]} {
			if got, want := countContent(p), plain(p); got != want {
				t.Fatalf("%q: %d, the plain rule %d", p, got, want)
			}
		}
	}
}

func BenchmarkCountContent(b *testing.B) {
	chunk := []byte(`{"model":"tiny","created_at":"2026-12-06T10:00:00.123456Z","message":{"role":"assistant","content":"Hel"},"done":false}` + "\n")
	b.SetBytes(int64(len(chunk)))
	for b.Loop() {
		countContent(chunk)
	}
}
