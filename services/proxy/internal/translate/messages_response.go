package translate

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"io"
	"net/http"
	"slices"
	"strings"

	"github.com/droverhq/drover/services/proxy/internal/sse"
)

// MessagesResponse returns the filter that turns the backend's answer to m
// into Anthropic's, for a dialect.Exchange's Transform: SSE events for a
// stream, one message otherwise, Anthropic's error object for an error
// status. model is the name the client asked for. It sets h's Content-Type
// to what Ollama sends.
func MessagesResponse(m Messages, model string, status int, h http.Header, client io.Writer) io.WriteCloser {
	if status >= 400 {
		h.Set("Content-Type", "application/json")
		return &buffered{w: client, fn: func(body []byte) []byte { return anthropicError(status, body) }}
	}
	a := &anthropicWriter{m: m, model: model, id: NewAnthropicID("msg")}
	if m.Stream {
		h.Set("Content-Type", "text/event-stream")
		return &messagesStream{WriteCloser: sse.EventFilter(client, a.event), a: a, w: client}
	}
	h.Set("Content-Type", "application/json")
	return &buffered{w: client, fn: a.whole}
}

// The shapes below are Ollama's (package anthropic), field for field and in
// its order; Text and Thinking are pointers so that a block start carries
// them empty, which the SDKs' accumulation needs.

type anthropicBlock struct {
	Type     string  `json:"type"`
	Text     *string `json:"text,omitempty"`
	ID       string  `json:"id,omitempty"`
	Name     string  `json:"name,omitempty"`
	Input    any     `json:"input,omitempty"`
	Thinking *string `json:"thinking,omitempty"`
}

type anthropicUsage struct {
	InputTokens  int64 `json:"input_tokens"`
	OutputTokens int64 `json:"output_tokens"`
}

type anthropicMessageOut struct {
	ID           string           `json:"id"`
	Type         string           `json:"type"`
	Role         string           `json:"role"`
	Model        string           `json:"model"`
	Content      []anthropicBlock `json:"content"`
	StopReason   string           `json:"stop_reason,omitempty"`
	StopSequence string           `json:"stop_sequence,omitempty"`
	Usage        anthropicUsage   `json:"usage"`
}

type anthropicDelta struct {
	Type        string `json:"type"`
	Text        string `json:"text,omitempty"`
	PartialJSON string `json:"partial_json,omitempty"`
	Thinking    string `json:"thinking,omitempty"`
}

type anthropicErr struct {
	Type    string `json:"type"`
	Message string `json:"message"`
}

// messagesReply is a chat completion, whole or one chunk of it, with vLLM's
// stop_reason (the stop string matched, or a token id).
type messagesReply struct {
	Choices []struct {
		Index        int             `json:"index"`
		Message      *oaText         `json:"message"`
		Delta        *oaText         `json:"delta"`
		FinishReason *string         `json:"finish_reason"`
		StopReason   json.RawMessage `json:"stop_reason"`
	} `json:"choices"`
	Usage *struct {
		PromptTokens     *int64 `json:"prompt_tokens"`
		CompletionTokens int64  `json:"completion_tokens"`
	} `json:"usage"`
	Timings *struct {
		PromptN    *int64 `json:"prompt_n"`
		CacheN     int64  `json:"cache_n"`
		PredictedN int64  `json:"predicted_n"`
	} `json:"timings"`
	Error json.RawMessage `json:"error"`
}

// anthropicWriter translates one response; it is used by one request only.
type anthropicWriter struct {
	m     Messages
	model string
	id    string
	// stream state
	started    bool
	index      int    // of the open block, or of the next one
	open       string // "text", "thinking" or "" (none open)
	calls      callDeltas
	callsSent  bool
	finish     string
	stopSeq    string
	input      *int64
	output     int64
	done, fail bool
}

// counts keeps the usage a reply reports (llama.cpp's timings otherwise).
func (a *anthropicWriter) counts(r *messagesReply) {
	if u := r.Usage; u != nil && u.PromptTokens != nil {
		a.input, a.output = u.PromptTokens, u.CompletionTokens
	} else if t := r.Timings; t != nil && t.PromptN != nil && a.input == nil {
		in := *t.PromptN + t.CacheN
		a.input, a.output = &in, t.PredictedN
	}
}

// stop keeps a choice's finish_reason and the stop sequence it matched.
func (a *anthropicWriter) stop(finish *string, stopReason json.RawMessage) {
	if finish == nil || *finish == "" {
		return
	}
	a.finish = *finish
	var s string
	if json.Unmarshal(stopReason, &s) == nil && slices.Contains(a.m.Stop, s) {
		a.stopSeq = s
	}
}

// stopReason maps OpenAI's finish_reason as Ollama maps its done_reason:
// any tool call makes it tool_use.
func (a *anthropicWriter) stopReason(toolCalls bool) string {
	switch {
	case toolCalls || a.finish == "tool_calls" || a.finish == "function_call":
		return "tool_use"
	case a.stopSeq != "":
		return "stop_sequence"
	case a.finish == "stop":
		return "end_turn"
	case a.finish == "length":
		return "max_tokens"
	case a.finish == "content_filter":
		return "refusal"
	case a.finish != "":
		return "end_turn"
	}
	return ""
}

func (a *anthropicWriter) usage() anthropicUsage {
	u := anthropicUsage{InputTokens: int64(a.m.Estimate), OutputTokens: a.output}
	if a.input != nil {
		u.InputTokens = *a.input
	}
	return u
}

// whole translates a non-streamed chat completion.
func (a *anthropicWriter) whole(body []byte) []byte {
	var r messagesReply
	if err := json.Unmarshal(body, &r); err != nil {
		return anthropicError(http.StatusInternalServerError, body)
	}
	a.counts(&r)
	var content []anthropicBlock
	for _, ch := range r.Choices {
		if ch.Index != 0 || ch.Message == nil {
			continue // Ollama has one choice
		}
		a.stop(ch.FinishReason, ch.StopReason)
		if think := str(ch.Message.ReasoningContent) + str(ch.Message.Reasoning); think != "" && a.m.Think {
			content = append(content, anthropicBlock{Type: "thinking", Thinking: &think})
		}
		if text := str(ch.Message.Content); text != "" {
			content = append(content, anthropicBlock{Type: "text", Text: &text})
		}
		for i, tc := range ch.Message.ToolCalls {
			tc.Index = i // a whole message's calls carry no index
			a.calls.add(tc)
		}
	}
	calls := a.toolBlocks()
	content = append(content, calls...)
	msg := anthropicMessageOut{
		ID: a.id, Type: "message", Role: "assistant", Model: a.model, Content: content,
		StopReason: a.stopReason(len(calls) > 0), StopSequence: a.stopSeq, Usage: a.usage(),
	}
	out, _ := json.Marshal(msg)
	return append(out, '\n')
}

// toolBlocks are the accumulated calls as tool_use blocks, their arguments
// parsed (an object, or {} when the backend's are not one).
func (a *anthropicWriter) toolBlocks() []anthropicBlock {
	var out []anthropicBlock
	for _, c := range a.calls {
		if c == nil {
			continue
		}
		var input map[string]any
		if json.Unmarshal([]byte(strings.TrimSpace(c.Function.Arguments)), &input) != nil || input == nil {
			input = map[string]any{}
		}
		out = append(out, anthropicBlock{Type: "tool_use", ID: c.ID, Name: c.Function.Name, Input: input})
	}
	return out
}

// anthropicError is the backend's error (any shape OpenAI-compatible
// servers send) as Anthropic's object, with the type Ollama's
// anthropic.NewError gives the status.
func anthropicError(status int, body []byte) []byte {
	msg := errorMessage(body)
	if msg == "" {
		msg = strings.TrimSpace(string(body))
	}
	var e struct {
		Type      string       `json:"type"`
		Error     anthropicErr `json:"error"`
		RequestID string       `json:"request_id,omitempty"`
	}
	e.Type, e.Error, e.RequestID = "error", anthropicErr{Type: AnthropicErrorType(status), Message: msg}, NewAnthropicID("req")
	out, _ := json.Marshal(e)
	return append(out, '\n')
}

// AnthropicErrorType is the type Anthropic (and Ollama's anthropic.NewError)
// give an error of status; 413 is Anthropic's own request_too_large. Drover's
// own Anthropic errors (package anthropicapi) and translated backend errors
// both use it.
func AnthropicErrorType(status int) string {
	switch status {
	case http.StatusBadRequest, http.StatusUnprocessableEntity:
		return "invalid_request_error"
	case http.StatusUnauthorized:
		return "authentication_error"
	case http.StatusForbidden:
		return "permission_error"
	case http.StatusNotFound:
		return "not_found_error"
	case http.StatusRequestEntityTooLarge:
		return "request_too_large"
	case http.StatusTooManyRequests:
		return "rate_limit_error"
	case http.StatusServiceUnavailable, 529:
		return "overloaded_error"
	default:
		return "api_error"
	}
}

// NewAnthropicID is prefix, "_" and 24 hex digits, as Ollama's generateID
// makes message ("msg"), tool use ("toolu") and request ("req") ids.
func NewAnthropicID(prefix string) string {
	var b [12]byte
	rand.Read(b[:]) //nolint:errcheck // never fails (crypto/rand)
	return prefix + "_" + hex.EncodeToString(b[:])
}

// sseEvent is Anthropic's "event: <type>\ndata: <json>\n\n".
func sseEvent(out []byte, typ string, data any) []byte {
	b, _ := json.Marshal(data)
	out = append(out, "event: "...)
	out = append(out, typ...)
	out = append(out, "\ndata: "...)
	out = append(out, b...)
	return append(out, '\n', '\n')
}
