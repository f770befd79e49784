package translate

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
)

// Anthropic's Messages API (POST /v1/messages) to OpenAI's chat
// completions and back, for OpenAI-type backends. The request is read as
// Ollama 0.17.4 reads it (package anthropic, FromMessagesRequest: the same
// fields, the same errors) and the answer is shaped as Ollama shapes its
// own (ToMessagesResponse, StreamConverter), so that a client cannot tell
// which kind of backend answered.

// Messages is a translated Messages request.
type Messages struct {
	Path   string // backend path: /v1/chat/completions
	Body   []byte
	Stream bool
	// Stop is the request's stop_sequences: a backend that names the one it
	// matched (vLLM's stop_reason) gets stop_reason "stop_sequence".
	Stop []string
	// Think is false when the client turned thinking off: reasoning the
	// backend sends anyway is dropped.
	Think bool
	// Estimate is Ollama's len/4 estimate of the input tokens, which its
	// message_start carries before the backend has counted them.
	Estimate int
}

// messagesRequest is what is read of a Messages request.
type messagesRequest struct {
	Model         string             `json:"model"`
	MaxTokens     int                `json:"max_tokens"`
	Messages      []anthropicMessage `json:"messages"`
	System        any                `json:"system"`
	Stream        bool               `json:"stream"`
	Temperature   *float64           `json:"temperature"`
	TopP          *float64           `json:"top_p"`
	TopK          *int               `json:"top_k"`
	StopSequences []string           `json:"stop_sequences"`
	Tools         []anthropicTool    `json:"tools"`
	ToolChoice    *struct {
		Type                   string `json:"type"`
		Name                   string `json:"name"`
		DisableParallelToolUse bool   `json:"disable_parallel_tool_use"`
	} `json:"tool_choice"`
	Thinking *struct {
		Type string `json:"type"`
	} `json:"thinking"`
}

type anthropicMessage struct {
	Role    string `json:"role"`
	Content any    `json:"content"` // a string or blocks
}

type anthropicTool struct {
	Type        string          `json:"type"`
	Name        string          `json:"name"`
	Description string          `json:"description"`
	InputSchema json.RawMessage `json:"input_schema"`
}

// oaFunctionTool is an OpenAI tool definition.
type oaFunctionTool struct {
	Type     string `json:"type"`
	Function struct {
		Name        string          `json:"name"`
		Description string          `json:"description,omitempty"`
		Parameters  json.RawMessage `json:"parameters,omitempty"`
	} `json:"function"`
}

// MessagesRequest translates a /v1/messages body for backend model model.
// An error is the client's mistake, worded as Ollama words it.
func MessagesRequest(body []byte, model string) (Messages, error) {
	var in messagesRequest
	if err := json.Unmarshal(body, &in); err != nil {
		return Messages{}, err
	}
	var msgs []oaMessage
	if sys := systemText(in.System); sys != "" {
		msgs = append(msgs, oaMessage{Role: "system", Content: sys})
	}
	for _, m := range in.Messages {
		conv, err := anthropicToOpenAI(m)
		if err != nil {
			return Messages{}, err
		}
		msgs = append(msgs, conv...)
	}
	out := map[string]any{"model": model, "messages": msgs, "max_tokens": in.MaxTokens, "stream": in.Stream}
	if in.Stream {
		out["stream_options"] = map[string]bool{"include_usage": true}
	}
	if in.Temperature != nil {
		out["temperature"] = *in.Temperature
	}
	if in.TopP != nil {
		out["top_p"] = *in.TopP
	}
	if in.TopK != nil {
		out["top_k"] = *in.TopK
	}
	if len(in.StopSequences) > 0 {
		out["stop"] = in.StopSequences
	}
	if len(in.Tools) > 0 {
		tools := make([]oaFunctionTool, 0, len(in.Tools))
		for _, t := range in.Tools {
			if t.Type != "" && t.Type != "custom" {
				// Ollama runs its web search itself; an OpenAI-compatible
				// server has nothing to run a server tool with.
				return Messages{}, fmt.Errorf("tool type %q is not supported for this model", t.Type)
			}
			var ft oaFunctionTool
			ft.Type = "function"
			ft.Function.Name, ft.Function.Description, ft.Function.Parameters = t.Name, t.Description, t.InputSchema
			tools = append(tools, ft)
		}
		out["tools"] = tools
	}
	if tc := in.ToolChoice; tc != nil {
		switch tc.Type {
		case "auto", "none":
			out["tool_choice"] = tc.Type
		case "any":
			out["tool_choice"] = "required"
		case "tool":
			out["tool_choice"] = map[string]any{"type": "function", "function": map[string]string{"name": tc.Name}}
		}
		if tc.DisableParallelToolUse && len(in.Tools) > 0 {
			out["parallel_tool_calls"] = false
		}
	}
	b, err := json.Marshal(out)
	if err != nil {
		return Messages{}, fmt.Errorf("translating messages request: %w", err)
	}
	return Messages{
		Path:     "/v1/chat/completions",
		Body:     b,
		Stream:   in.Stream,
		Stop:     in.StopSequences,
		Think:    in.Thinking == nil || in.Thinking.Type != "disabled",
		Estimate: estimateTokens(in),
	}, nil
}

// systemText is the system prompt: a string, or its text blocks joined.
func systemText(sys any) string {
	switch s := sys.(type) {
	case string:
		return s
	case []any:
		var b strings.Builder
		for _, block := range s {
			if m, ok := block.(map[string]any); ok && m["type"] == "text" {
				t, _ := m["text"].(string)
				b.WriteString(t)
			}
		}
		return b.String()
	}
	return ""
}

// anthropicToOpenAI turns one Anthropic message into OpenAI messages: the
// tool results it carries first, each a tool message (OpenAI wants them
// right after the assistant's calls), then the rest of it.
func anthropicToOpenAI(msg anthropicMessage) ([]oaMessage, error) {
	role := strings.ToLower(msg.Role)
	var blocks []any
	switch c := msg.Content.(type) {
	case string:
		return []oaMessage{{Role: role, Content: c}}, nil
	case []any:
		blocks = c
	default:
		return nil, fmt.Errorf("invalid message content type: %T", msg.Content)
	}
	var (
		out      []oaMessage
		text     strings.Builder
		parts    []contentPart
		hasImage bool
		calls    []oaToolCall
	)
	for _, block := range blocks {
		b, ok := block.(map[string]any)
		if !ok {
			return nil, errors.New("invalid content block format")
		}
		switch typ, _ := b["type"].(string); typ {
		case "text":
			t, _ := b["text"].(string)
			text.WriteString(t)
			if t != "" { // an empty text part is refused by some servers
				parts = append(parts, contentPart{Type: "text", Text: t})
			}
		case "image":
			url, err := imageURLOf(b)
			if err != nil {
				return nil, err
			}
			hasImage = true
			parts = append(parts, contentPart{Type: "image_url", ImageURL: &imageURL{URL: url}})
		case "tool_use":
			id, ok := b["id"].(string)
			if !ok {
				return nil, errors.New("tool_use block missing required 'id' field")
			}
			name, ok := b["name"].(string)
			if !ok {
				return nil, errors.New("tool_use block missing required 'name' field")
			}
			args := "{}"
			if input, ok := b["input"].(map[string]any); ok {
				a, _ := json.Marshal(input)
				args = string(a)
			}
			var tc oaToolCall
			tc.ID, tc.Type = id, "function"
			tc.Function.Name, tc.Function.Arguments = name, args
			calls = append(calls, tc)
		case "tool_result":
			id, _ := b["tool_use_id"].(string)
			out = append(out, oaMessage{Role: "tool", Content: resultText(b["content"]), ToolCallID: id})
		}
		// thinking blocks and unknown ones have no OpenAI counterpart.
	}
	if text.Len() == 0 && !hasImage && len(calls) == 0 {
		return out, nil
	}
	m := oaMessage{Role: role, ToolCalls: calls}
	switch {
	case hasImage:
		m.Content = parts
	case text.Len() > 0 || len(calls) == 0:
		m.Content = text.String()
	}
	return append(out, m), nil
}

// imageURLOf is an image block's source as an image_url: a base64 source
// as a data URL, a url source as it is.
func imageURLOf(b map[string]any) (string, error) {
	src, ok := b["source"].(map[string]any)
	if !ok {
		return "", errors.New("invalid image source")
	}
	switch typ, _ := src["type"].(string); typ {
	case "base64":
		data, _ := src["data"].(string)
		if _, err := base64.StdEncoding.DecodeString(data); err != nil {
			return "", fmt.Errorf("invalid base64 image data: %w", err)
		}
		media, _ := src["media_type"].(string)
		if media == "" {
			media = "image/png"
		}
		return "data:" + media + ";base64," + data, nil
	case "url":
		if u, _ := src["url"].(string); u != "" {
			return u, nil
		}
		return "", errors.New("invalid image source")
	default:
		return "", fmt.Errorf("invalid image source type: %s. Only base64 and url images are supported", typ)
	}
}

// resultText is a tool result's content: a string, or its text blocks
// joined.
func resultText(c any) string {
	switch c := c.(type) {
	case string:
		return c
	case []any:
		var b strings.Builder
		for _, block := range c {
			if m, ok := block.(map[string]any); ok && m["type"] == "text" {
				t, _ := m["text"].(string)
				b.WriteString(t)
			}
		}
		return b.String()
	}
	return ""
}

// estimateTokens is Ollama's estimate (anthropic.EstimateInputTokens): a
// quarter of the length of the system prompt, roles, texts, thinking,
// tool calls and results as JSON, and tool definitions; at least 1.
func estimateTokens(r messagesRequest) int {
	n := contentLength(r.System)
	for _, m := range r.Messages {
		n += len(m.Role) + contentLength(m.Content)
	}
	for _, t := range r.Tools {
		n += len(t.Name) + len(t.Description) + len(t.InputSchema)
	}
	tokens := n / 4
	if tokens == 0 && (len(r.Messages) > 0 || r.System != nil) {
		tokens = 1
	}
	return tokens
}

func contentLength(c any) int {
	switch c := c.(type) {
	case nil:
		return 0
	case string:
		return len(c)
	case []any:
		n := 0
		for _, block := range c {
			n += blockLength(block)
		}
		return n
	default:
		b, _ := json.Marshal(c)
		return len(b)
	}
}

func blockLength(block any) int {
	m, ok := block.(map[string]any)
	if !ok {
		s, _ := block.(string)
		return len(s)
	}
	n := 0
	if t, ok := m["text"].(string); ok {
		n += len(t)
	}
	if t, ok := m["thinking"].(string); ok {
		n += len(t)
	}
	if typ := m["type"]; typ == "tool_use" || typ == "tool_result" {
		b, _ := json.Marshal(m)
		n += len(b)
	}
	return n
}
