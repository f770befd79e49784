package openai

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"

	"github.com/droverhq/drover/services/proxy/internal/dialect"
	"github.com/droverhq/drover/services/proxy/internal/sse"
)

// V1 is the exchange for a route of the OpenAI API on a server that speaks
// it (Ollama's /v1 endpoints do too). Every request field goes to the
// backend as sent, except the model's name when an alias renames it, and a
// stream whose client did not ask for usage asks for it anyway, the usage
// that brings being taken out again on the way back. Tokens are read from
// the usage the answer reports (tokens.go). The Responses and images routes
// go as they are (responses.go).
func V1(c dialect.Call) (dialect.Exchange, error) {
	if passRoutes[c.Route] {
		return passed(c)
	}
	x := dialect.Exchange{Path: c.Route, Body: c.Body, Tokens: countWhole}
	if c.Stream {
		x.Tokens, x.Complete = countStream, streamDone
	}
	var err error
	switch {
	case c.Stream && !c.IncludeUsage:
		x.Body, err = withUsage(c.Body, c.Target, c.Renamed())
		x.Transform = dropUsageOK
	case c.Renamed():
		x.Body, err = dialect.SetModel(c.Body, c.Target)
	}
	return x, err
}

// withUsage rewrites a streaming request for backend model name model,
// asking for stream_options.include_usage; every other field stays as the
// client sent it. When the body does not mention stream_options and keeps
// its model, the field is spliced in without re-encoding the body (which
// may carry megabytes of images).
func withUsage(body []byte, model string, renamed bool) ([]byte, error) {
	if !renamed && !bytes.Contains(body, []byte(`"stream_options"`)) {
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

// dropUsageOK filters a successful stream through dropUsage; an error
// answer passes as it is.
func dropUsageOK(status int, _ http.Header, client io.Writer) io.WriteCloser {
	if status != http.StatusOK {
		return nil
	}
	return dropUsage(client)
}

// dropUsage is the filter for a stream whose client did not ask for usage
// but got it because Drover did: it removes the usage-only chunk (empty
// choices) and the usage field other chunks carry (Ollama's /v1/completions
// puts zeros on every chunk, OpenAI null), so the client sees the stream it
// asked for.
func dropUsage(client io.Writer) io.WriteCloser {
	return sse.EventFilter(client, func(ev []byte) []byte {
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
		data := sse.EventData(ev)
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
