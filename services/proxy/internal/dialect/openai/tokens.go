package openai

import (
	"bytes"

	"github.com/droverhq/drover/services/proxy/internal/meter"
)

// Where an OpenAI-compatible answer reports its tokens: at its end,
// usage.prompt_tokens and usage.completion_tokens (no completion_tokens for
// embeddings and rerank: zero output), else llama.cpp's timings (prompt_n
// plus cache_n, predicted_n). Neither present: nil, unknown.

// countWhole reads the counts of a non-streamed answer.
func countWhole(m *meter.Meter) (in, out *int64) {
	if i, ok := m.Count("prompt_tokens"); ok {
		o, _ := m.Count("completion_tokens")
		return &i, &o
	}
	if i, ok := m.Count("prompt_n"); ok {
		c, _ := m.Count("cache_n")
		o, _ := m.Count("predicted_n")
		i += c
		return &i, &o
	}
	return nil, nil
}

// countStream reads a stream's counts once it reached data: [DONE]; chunks
// before it may carry placeholder usage.
func countStream(m *meter.Meter) (in, out *int64) {
	if !streamDone(m) {
		return nil, nil
	}
	return countWhole(m)
}

// streamDone reports a stream that reached data: [DONE].
func streamDone(m *meter.Meter) bool { return bytes.Contains(m.Tail(), []byte("data: [DONE]")) }
