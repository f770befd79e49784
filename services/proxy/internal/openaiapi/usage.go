package openaiapi

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"

	"github.com/droverhq/drover/services/proxy/internal/backend"
	"github.com/droverhq/drover/services/proxy/internal/fleet"
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
// client sent it. When the request has no stream_options and keeps its
// model, the field is spliced in without re-encoding the body (which may
// carry megabytes of images).
func withUsage(body []byte, model string, hd head) ([]byte, error) {
	if len(hd.RawStreamOptions) == 0 && fleet.Normalize(model) == fleet.Normalize(hd.Model) {
		if i := bytes.IndexByte(body, '{'); i >= 0 {
			const field = `"stream_options":{"include_usage":true},`
			out := make([]byte, 0, len(body)+len(field))
			out = append(out, body[:i+1]...)
			out = append(out, field...)
			return append(out, body[i+1:]...), nil
		}
	}
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
		// The usual cases without decoding: the usage-only chunk, and
		// OpenAI's "usage":null on every other chunk. A quoted key followed
		// by a colon cannot occur inside a JSON string.
		if hasKeyValue(ev, "choices", "[]") && hasKeyValue(ev, "usage", "{") {
			return nil
		}
		if i := bytes.Index(ev, []byte(`,"usage":null`)); i >= 0 && bytes.Count(ev, []byte(`"usage"`)) == 1 {
			return append(append([]byte(nil), ev[:i]...), ev[i+len(`,"usage":null`):]...)
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

// hasKeyValue reports whether "key", a colon and a value starting with
// prefix appear in b (whitespace allowed around the colon and inside an
// empty array).
func hasKeyValue(b []byte, key, prefix string) bool {
	pat := `"` + key + `"`
	for {
		i := bytes.Index(b, []byte(pat))
		if i < 0 {
			return false
		}
		b = b[i+len(pat):]
		rest := bytes.TrimLeft(b, " \t\r\n")
		if len(rest) == 0 || rest[0] != ':' {
			continue
		}
		rest = bytes.TrimLeft(rest[1:], " \t\r\n")
		if prefix == "[]" && len(rest) > 0 && rest[0] == '[' {
			rest = bytes.TrimLeft(rest[1:], " \t\r\n")
			if len(rest) > 0 && rest[0] == ']' {
				return true
			}
			continue
		}
		if bytes.HasPrefix(rest, []byte(prefix)) {
			return true
		}
	}
}
