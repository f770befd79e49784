package openai

import (
	"bytes"

	"github.com/droverhq/drover/services/proxy/internal/meter"
)

// Where an OpenAI-compatible answer reports its tokens: at its end,
// usage.prompt_tokens and usage.completion_tokens (no completion_tokens for
// embeddings and rerank: zero output), else llama.cpp's timings (prompt_n
// plus cache_n, predicted_n). Neither present: nil, unknown.

// countWhole reads the counts of a non-streamed answer. In a body that
// broke off (meter.Meter.MarkCut) before its output count the output is
// unknown, not zero: usage's completion_tokens comes between prompt_tokens
// and total_tokens, so only past total_tokens is a missing one a zero
// (an embedding's); llama.cpp's predicted_n follows prompt_n.
func countWhole(m *meter.Meter) (in, out *int64) {
	if i, ok := m.Count("prompt_tokens"); ok {
		o, ok := m.Count("completion_tokens")
		if !ok && m.Cut() {
			if _, past := m.Count("total_tokens"); !past {
				return &i, nil
			}
		}
		return &i, &o
	}
	if i, ok := m.Count("prompt_n"); ok {
		c, _ := m.Count("cache_n")
		o, ok := m.Count("predicted_n")
		i += c
		if !ok && m.Cut() {
			return &i, nil
		}
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

// countUsage reads a whole answer's usage.input_tokens and
// usage.output_tokens (a Response; an image answer that reports usage).
// Without input_tokens the counts are unknown; without output_tokens in a
// body that broke off (meter.Meter.MarkCut), the output is.
func countUsage(m *meter.Meter) (in, out *int64) {
	i, ok := m.Count("input_tokens")
	if !ok {
		return nil, nil
	}
	o, ok := m.Count("output_tokens")
	if !ok && m.Cut() {
		return &i, nil
	}
	return &i, &o
}

// countResponseStream reads the usage of the Response a Responses stream
// ends with: response.completed (or response.incomplete, which is billed
// too). Earlier events carry "usage":null.
func countResponseStream(m *meter.Meter) (in, out *int64) {
	if !hasEvent(m, "response.completed") && !hasEvent(m, "response.incomplete") {
		return nil, nil
	}
	return countUsage(m)
}

// responseDone reports a Responses stream that reached its last event:
// response.completed, response.incomplete or response.failed. A quoted
// "type" key cannot occur inside a JSON string, so the text delta cannot
// fake one.
func responseDone(m *meter.Meter) bool {
	return hasEvent(m, "response.completed") || hasEvent(m, "response.incomplete") || hasEvent(m, "response.failed")
}

func hasEvent(m *meter.Meter, typ string) bool {
	return bytes.Contains(m.Tail(), []byte(`"type":"`+typ+`"`))
}
