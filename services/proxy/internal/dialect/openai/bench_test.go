package openai

import (
	"fmt"
	"io"
	"testing"
)

// A typical stream as Ollama's /v1 sends it with include_usage: ten
// content chunks, a finish chunk, the usage chunk, [DONE], each arriving
// in its own read as a flushed stream does.
func ollamaV1Stream() []string {
	var events []string
	for i := range 10 {
		events = append(events, fmt.Sprintf(`data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"tiny","system_fingerprint":"fp_ollama","choices":[{"index":0,"delta":{"role":"assistant","content":" word%d"},"finish_reason":null}]}`+"\n\n", i))
	}
	events = append(events,
		`data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"tiny","system_fingerprint":"fp_ollama","choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":"stop"}]}`+"\n\n",
		`data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"tiny","system_fingerprint":"fp_ollama","choices":[],"usage":{"prompt_tokens":7,"completion_tokens":10,"total_tokens":17}}`+"\n\n",
		"data: [DONE]\n\n")
	return events
}

// BenchmarkDropUsage is the per-request cost of hiding the usage chunk
// (compare BenchmarkPassThrough); the request side is BenchmarkWithUsage.
func BenchmarkDropUsage(b *testing.B) {
	events := ollamaV1Stream()
	b.ReportAllocs()
	for b.Loop() {
		f := dropUsage(io.Discard)
		for _, ev := range events {
			f.Write([]byte(ev)) //nolint:errcheck
		}
		f.Close() //nolint:errcheck
	}
}

func BenchmarkPassThrough(b *testing.B) {
	events := ollamaV1Stream()
	b.ReportAllocs()
	for b.Loop() {
		for _, ev := range events {
			io.Discard.Write([]byte(ev)) //nolint:errcheck
		}
	}
}

func BenchmarkWithUsage(b *testing.B) {
	body := []byte(`{"model":"tiny","messages":[{"role":"user","content":"hello there"}],"stream":true}`)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := withUsage(body, "tiny", false); err != nil {
			b.Fatal(err)
		}
	}
}
