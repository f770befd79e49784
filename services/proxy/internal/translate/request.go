// Package translate turns Ollama-native requests into OpenAI-compatible
// ones for OpenAI-type backends (vLLM, llama.cpp's server, hosted APIs) and
// their answers back into Ollama's, streaming included: /api/chat and
// /api/generate become /v1/chat/completions (or /v1/completions for raw
// prompts), /api/embed and /api/embeddings become /v1/embeddings. Anthropic's
// Messages API (/v1/messages) becomes /v1/chat/completions too, its answer
// Anthropic's message or events as Ollama shapes them (messages*.go).
package translate

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
)

// Kind is the Ollama route being translated.
type Kind int

const (
	Chat Kind = iota
	Generate
	Embed
	Embeddings
)

// Request is a translated request.
type Request struct {
	Kind   Kind
	Path   string // backend path
	Body   []byte
	Stream bool
	// Think is false when the client turned thinking off ("think": false):
	// reasoning the backend sends anyway is dropped, as Ollama would not
	// have produced it.
	Think bool
	// Raw is a generate request sent as a plain completion.
	Raw bool
}

// message is an Ollama chat message.
type message struct {
	Role       string     `json:"role"`
	Content    string     `json:"content"`
	Thinking   string     `json:"thinking,omitempty"`
	Images     []string   `json:"images,omitempty"`
	ToolCalls  []toolCall `json:"tool_calls,omitempty"`
	ToolName   string     `json:"tool_name,omitempty"`
	ToolCallID string     `json:"tool_call_id,omitempty"`
}

// toolCall is Ollama's: arguments are an object.
type toolCall struct {
	ID       string `json:"id,omitempty"`
	Function struct {
		Index     int             `json:"index"`
		Name      string          `json:"name"`
		Arguments json.RawMessage `json:"arguments"`
	} `json:"function"`
}

// common holds the fields chat and generate share.
type common struct {
	Model   string                     `json:"model"`
	Format  json.RawMessage            `json:"format"`
	Options map[string]json.RawMessage `json:"options"`
	Stream  *bool                      `json:"stream"`
	Think   json.RawMessage            `json:"think"`
}

type chatRequest struct {
	common
	Messages []message `json:"messages"`
	Tools    []any     `json:"tools"`
}

type generateRequest struct {
	common
	Prompt string   `json:"prompt"`
	Suffix string   `json:"suffix"`
	System string   `json:"system"`
	Images []string `json:"images"`
	Raw    bool     `json:"raw"`
}

// ChatRequest translates an /api/chat body for backend model model.
func ChatRequest(body []byte, model string) (Request, error) {
	var in chatRequest
	if err := json.Unmarshal(body, &in); err != nil {
		return Request{}, fmt.Errorf("translating chat request: %w", err)
	}
	msgs, err := messages(in.Messages)
	if err != nil {
		return Request{}, err
	}
	out := map[string]any{"model": model, "messages": msgs}
	if len(in.Tools) > 0 {
		out["tools"] = in.Tools
	}
	return finish(Chat, "/v1/chat/completions", out, in.common)
}

// GenerateRequest translates an /api/generate body: a chat completion of
// the system and prompt (Ollama applies the model's template too), or a
// plain completion when raw or with a suffix (fill-in-the-middle).
func GenerateRequest(body []byte, model string) (Request, error) {
	var in generateRequest
	if err := json.Unmarshal(body, &in); err != nil {
		return Request{}, fmt.Errorf("translating generate request: %w", err)
	}
	if (in.Raw || in.Suffix != "") && len(in.Images) == 0 {
		out := map[string]any{"model": model, "prompt": in.Prompt}
		if in.Suffix != "" {
			out["suffix"] = in.Suffix
		}
		r, err := finish(Generate, "/v1/completions", out, in.common)
		r.Raw = true
		return r, err
	}
	var ms []message
	if in.System != "" {
		ms = append(ms, message{Role: "system", Content: in.System})
	}
	ms = append(ms, message{Role: "user", Content: in.Prompt, Images: in.Images})
	msgs, err := messages(ms)
	if err != nil {
		return Request{}, err
	}
	return finish(Generate, "/v1/chat/completions", map[string]any{"model": model, "messages": msgs}, in.common)
}

// EmbedRequest translates /api/embed: every input, in order.
func EmbedRequest(body []byte, model string) (Request, error) {
	var in struct {
		Input      json.RawMessage `json:"input"`
		Dimensions int             `json:"dimensions"`
	}
	if err := json.Unmarshal(body, &in); err != nil {
		return Request{}, fmt.Errorf("translating embed request: %w", err)
	}
	out := map[string]any{"model": model, "input": in.Input, "encoding_format": "float"}
	if in.Dimensions > 0 {
		out["dimensions"] = in.Dimensions
	}
	b, err := json.Marshal(out)
	return Request{Kind: Embed, Path: "/v1/embeddings", Body: b, Think: true}, err
}

// EmbeddingsRequest translates the legacy /api/embeddings (one prompt).
func EmbeddingsRequest(body []byte, model string) (Request, error) {
	var in struct {
		Prompt string `json:"prompt"`
	}
	if err := json.Unmarshal(body, &in); err != nil {
		return Request{}, fmt.Errorf("translating embeddings request: %w", err)
	}
	b, err := json.Marshal(map[string]any{"model": model, "input": in.Prompt, "encoding_format": "float"})
	return Request{Kind: Embeddings, Path: "/v1/embeddings", Body: b, Think: true}, err
}

// finish adds what chat and generate share: stream (Ollama's default is
// on, OpenAI's off) with usage asked for, format, options, think.
func finish(kind Kind, path string, out map[string]any, c common) (Request, error) {
	r := Request{Kind: kind, Path: path, Stream: c.Stream == nil || *c.Stream, Think: true}
	out["stream"] = r.Stream
	if r.Stream {
		out["stream_options"] = map[string]bool{"include_usage": true}
	}
	if rf, err := responseFormat(c.Format); err != nil {
		return Request{}, err
	} else if rf != nil {
		out["response_format"] = rf
	}
	if err := options(out, c.Options); err != nil {
		return Request{}, err
	}
	switch t := bytes.TrimSpace(c.Think); {
	case bytes.Equal(t, []byte("false")):
		r.Think = false
	case len(t) > 0 && t[0] == '"':
		var effort string
		json.Unmarshal(t, &effort) //nolint:errcheck // a quoted JSON string
		out["reasoning_effort"] = effort
	}
	b, err := json.Marshal(out)
	r.Body = b
	return r, err
}

// responseFormat maps Ollama's format: "json" is JSON mode, an object is a
// JSON schema.
func responseFormat(format json.RawMessage) (any, error) {
	f := bytes.TrimSpace(format)
	switch {
	case len(f) == 0 || bytes.Equal(f, []byte("null")) || bytes.Equal(f, []byte(`""`)):
		return nil, nil
	case bytes.Equal(f, []byte(`"json"`)):
		return map[string]string{"type": "json_object"}, nil
	case f[0] == '{':
		return map[string]any{"type": "json_schema", "json_schema": map[string]any{"name": "response", "schema": json.RawMessage(f), "strict": true}}, nil
	}
	return nil, fmt.Errorf("invalid format: %s", f)
}

// optionNames maps Ollama options to OpenAI request fields; options OpenAI
// has no word for (num_ctx, repeat_last_n, ...) are the backend's own
// settings there and are dropped.
var optionNames = map[string]string{
	"num_predict":       "max_tokens",
	"temperature":       "temperature",
	"top_p":             "top_p",
	"top_k":             "top_k",
	"min_p":             "min_p",
	"seed":              "seed",
	"stop":              "stop",
	"frequency_penalty": "frequency_penalty",
	"presence_penalty":  "presence_penalty",
}

func options(out map[string]any, opts map[string]json.RawMessage) error {
	for k, v := range opts {
		name, ok := optionNames[k]
		if !ok || bytes.Equal(bytes.TrimSpace(v), []byte("null")) {
			continue
		}
		if k == "num_predict" {
			var n int
			if err := json.Unmarshal(v, &n); err != nil {
				return fmt.Errorf("option num_predict: %w", err)
			}
			if n < 0 { // -1 infinite, -2 fill the context: the backend's default
				continue
			}
		}
		out[name] = v
	}
	return nil
}

// oaMessage is an OpenAI chat message.
type oaMessage struct {
	Role             string       `json:"role"`
	Content          any          `json:"content"`
	ReasoningContent string       `json:"reasoning_content,omitempty"`
	ToolCalls        []oaToolCall `json:"tool_calls,omitempty"`
	ToolCallID       string       `json:"tool_call_id,omitempty"`
	Name             string       `json:"name,omitempty"`
}

type oaToolCall struct {
	ID       string `json:"id"`
	Type     string `json:"type"`
	Function struct {
		Name      string `json:"name"`
		Arguments string `json:"arguments"`
	} `json:"function"`
}

type contentPart struct {
	Type     string    `json:"type"`
	Text     string    `json:"text,omitempty"`
	ImageURL *imageURL `json:"image_url,omitempty"`
}

type imageURL struct {
	URL string `json:"url"`
}

// messages converts Ollama messages. Tool calls get ids when Ollama's have
// none, and a tool result without a tool_call_id answers the earliest
// unanswered call of its tool_name (else the earliest unanswered call), as
// OpenAI requires every result to name its call.
func messages(in []message) ([]oaMessage, error) {
	out := make([]oaMessage, 0, len(in))
	type pending struct{ id, name string }
	var open []pending
	n := 0
	for _, m := range in {
		om := oaMessage{Role: m.Role, Content: m.Content, ReasoningContent: m.Thinking}
		if len(m.Images) > 0 {
			parts := []contentPart{}
			if m.Content != "" {
				parts = append(parts, contentPart{Type: "text", Text: m.Content})
			}
			for _, img := range m.Images {
				url, err := dataURL(img)
				if err != nil {
					return nil, err
				}
				parts = append(parts, contentPart{Type: "image_url", ImageURL: &imageURL{URL: url}})
			}
			om.Content = parts
		}
		for _, tc := range m.ToolCalls {
			id := tc.ID
			if id == "" {
				n++
				id = fmt.Sprintf("call_%d", n)
			}
			args := bytes.TrimSpace(tc.Function.Arguments)
			if len(args) == 0 || bytes.Equal(args, []byte("null")) {
				args = []byte("{}")
			}
			var otc oaToolCall
			otc.ID, otc.Type = id, "function"
			otc.Function.Name, otc.Function.Arguments = tc.Function.Name, string(args)
			om.ToolCalls = append(om.ToolCalls, otc)
			open = append(open, pending{id, tc.Function.Name})
		}
		if m.Role == "tool" {
			om.Name = m.ToolName
			om.ToolCallID = m.ToolCallID
			pick := -1
			for i, p := range open {
				if (om.ToolCallID != "" && p.id == om.ToolCallID) || (om.ToolCallID == "" && p.name == m.ToolName) {
					pick = i
					break
				}
			}
			if pick < 0 && om.ToolCallID == "" && len(open) > 0 {
				pick = 0
			}
			if pick >= 0 {
				om.ToolCallID = open[pick].id
				open = append(open[:pick], open[pick+1:]...)
			}
		}
		out = append(out, om)
	}
	return out, nil
}

// dataURL turns an Ollama image (base64, no prefix) into a data URL with
// the type its first bytes announce.
func dataURL(img string) (string, error) {
	if strings.HasPrefix(img, "data:") {
		return img, nil
	}
	if !isBase64(img) {
		return "", errors.New("invalid image: not base64")
	}
	head := img[:min(len(img), 24)]
	raw, _ := base64.StdEncoding.DecodeString(head[:len(head)/4*4])
	mime := "image/jpeg"
	switch {
	case bytes.HasPrefix(raw, []byte("\x89PNG")):
		mime = "image/png"
	case bytes.HasPrefix(raw, []byte("GIF8")):
		mime = "image/gif"
	case len(raw) >= 12 && bytes.Equal(raw[:4], []byte("RIFF")) && bytes.Equal(raw[8:12], []byte("WEBP")):
		mime = "image/webp"
	}
	return "data:" + mime + ";base64," + img, nil
}

// isBase64 checks standard padded base64 without decoding it all.
func isBase64(s string) bool {
	if len(s) == 0 || len(s)%4 != 0 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'A' && c <= 'Z', c >= 'a' && c <= 'z', c >= '0' && c <= '9', c == '+', c == '/':
		case c == '=' && i >= len(s)-2:
		default:
			return false
		}
	}
	return true
}
