package openaiapi

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"

	"github.com/droverhq/drover/services/proxy/internal/backend"
	"github.com/droverhq/drover/services/proxy/internal/forward"
)

// CountUsage reads token counts from the end of an OpenAI-style response:
// usage.prompt_tokens and usage.completion_tokens (absent for embeddings
// and rerank: zero output), else llama.cpp's timings (prompt_n plus
// cache_n, predicted_n). A stream counts only once it reached
// "data: [DONE]": chunks before it may carry placeholder usage. Neither
// present: nil, unknown.
func CountUsage(stream bool) func(b *backend.Backend, m *forward.Meter) (in, out *int64) {
	return func(_ *backend.Backend, m *forward.Meter) (in, out *int64) {
		if stream && !streamDone(m) {
			return nil, nil
		}
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
}

// streamDone reports a stream that reached data: [DONE].
func streamDone(m *forward.Meter) bool { return bytes.Contains(m.Tail(), []byte("data: [DONE]")) }

// withUsage rewrites a streaming request for backend model name model,
// asking for stream_options.include_usage; every other field stays as the
// client sent it.
func withUsage(body []byte, model string) ([]byte, error) {
	var doc map[string]json.RawMessage
	if err := json.Unmarshal(body, &doc); err != nil {
		return nil, fmt.Errorf("invalid JSON body: %w", err)
	}
	opts := map[string]json.RawMessage{}
	if raw, ok := doc["stream_options"]; ok && !bytes.Equal(bytes.TrimSpace(raw), []byte("null")) {
		if err := json.Unmarshal(raw, &opts); err != nil {
			return nil, fmt.Errorf("stream_options: %w", err)
		}
	}
	opts["include_usage"] = json.RawMessage("true")
	doc["stream_options"], _ = json.Marshal(opts)
	doc["model"], _ = json.Marshal(model)
	return json.Marshal(doc)
}

// dropUsage is the filter for a stream whose client did not ask for usage
// but got it because Drover did: it removes the usage-only chunk (empty
// choices) and the usage field other chunks carry (Ollama's /v1/completions
// puts zeros on every chunk, OpenAI null), so the client sees the stream it
// asked for.
func dropUsage(client io.Writer) io.WriteCloser {
	return forward.EventFilter(client, func(ev []byte) []byte {
		if !bytes.Contains(ev, []byte(`"usage"`)) {
			return ev
		}
		data := forward.EventData(ev)
		var doc map[string]json.RawMessage
		if json.Unmarshal(data, &doc) != nil {
			return ev
		}
		if _, ok := doc["usage"]; !ok {
			return ev
		}
		var choices []json.RawMessage
		if json.Unmarshal(doc["choices"], &choices) == nil && len(choices) == 0 {
			return nil
		}
		delete(doc, "usage")
		out, err := json.Marshal(doc)
		if err != nil {
			return ev
		}
		return append(append([]byte("data: "), out...), '\n', '\n')
	})
}
