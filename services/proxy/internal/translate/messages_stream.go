package translate

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"

	"github.com/droverhq/drover/services/proxy/internal/sse"
)

// A chat completion stream becomes Anthropic's events in Ollama's order
// (its StreamConverter): message_start on the first chunk; a thinking
// block, then a text block, each opened on its first delta and closed when
// the next kind starts; each tool call as one tool_use block (start, its
// whole input as one input_json_delta, stop) once the backend has finished
// sending its calls; at data: [DONE] the open block's stop, message_delta
// with the stop reason and the backend's counts, and message_stop. An error
// chunk becomes Anthropic's error event and ends the stream.

// messagesStream is a translated stream. Its Close ends a stream whose
// backend ended cleanly without [DONE]: as [DONE] would have when the
// backend had sent its finish_reason, else with Anthropic's error event
// (the answer was cut short, and message_stop would pass it off as whole).
type messagesStream struct {
	io.WriteCloser
	a *anthropicWriter
	w io.Writer
}

// Whole reports whether the stream so far is a whole answer: it reached
// [DONE], or the backend sent its finish_reason and no error (Close then
// ends it normally). The forwarder records the other case as cut short.
func (s *messagesStream) Whole() bool { return s.a.done || (!s.a.fail && s.a.finish != "") }

func (s *messagesStream) Close() error {
	if err := s.WriteCloser.Close(); err != nil {
		return err
	}
	if s.a.done || s.a.fail {
		return nil
	}
	if s.a.finish == "" {
		s.a.fail = true
		_, err := s.w.Write(anthropicErrorEvent(nil, TruncatedMessage))
		return err
	}
	_, err := s.w.Write(s.a.final(nil))
	return err
}

// TruncatedMessage is the error a translated stream ends with when its
// backend ended it cleanly before the answer's end (no finish_reason, no
// [DONE]); it starts as the error Ollama writes when generation fails
// mid-stream.
const TruncatedMessage = "an error was encountered while running the model: the backend's stream ended before the answer did"

// anthropicErrorEvent appends Anthropic's mid-stream error event:
// event: error, {"type":"error","error":{"type":"api_error","message":...}}.
func anthropicErrorEvent(out []byte, msg string) []byte {
	return sseEvent(out, "error", struct {
		Type  string       `json:"type"`
		Error anthropicErr `json:"error"`
	}{"error", anthropicErr{Type: AnthropicErrorType(http.StatusInternalServerError), Message: msg}})
}

// event translates one SSE event of the backend's stream.
func (a *anthropicWriter) event(ev []byte) []byte {
	data := bytes.TrimSpace(sse.EventData(ev))
	if len(data) == 0 || a.done || a.fail {
		return nil
	}
	if bytes.Equal(data, []byte("[DONE]")) {
		return a.final(nil)
	}
	var r messagesReply
	if json.Unmarshal(data, &r) != nil {
		return nil
	}
	if len(r.Error) > 0 && !bytes.Equal(r.Error, []byte("null")) {
		a.fail = true
		return anthropicErrorEvent(nil, errorMessage(data))
	}
	a.counts(&r)
	out := a.start(nil)
	for _, ch := range r.Choices {
		if ch.Index != 0 || ch.Delta == nil {
			if ch.Index == 0 {
				a.stop(ch.FinishReason, ch.StopReason)
			}
			continue // Ollama has one choice
		}
		if think := str(ch.Delta.ReasoningContent) + str(ch.Delta.Reasoning); think != "" && a.m.Think {
			out = a.delta(out, "thinking", anthropicDelta{Type: "thinking_delta", Thinking: think})
		}
		if text := str(ch.Delta.Content); text != "" {
			out = a.delta(out, "text", anthropicDelta{Type: "text_delta", Text: text})
		}
		for _, tc := range ch.Delta.ToolCalls {
			a.calls.add(tc)
		}
		a.stop(ch.FinishReason, ch.StopReason)
		if a.finish != "" {
			out = a.sendCalls(out)
		}
	}
	return out
}

// start is message_start, once, with Ollama's estimate of the input tokens
// (the backend counts them only at the end).
func (a *anthropicWriter) start(out []byte) []byte {
	if a.started {
		return out
	}
	a.started = true
	return sseEvent(out, "message_start", struct {
		Type    string              `json:"type"`
		Message anthropicMessageOut `json:"message"`
	}{"message_start", anthropicMessageOut{
		ID: a.id, Type: "message", Role: "assistant", Model: a.model, Content: []anthropicBlock{},
		Usage: anthropicUsage{InputTokens: int64(a.m.Estimate)},
	}})
}

// delta adds d to the open block of kind, opening it (and closing another
// kind's) first.
func (a *anthropicWriter) delta(out []byte, kind string, d anthropicDelta) []byte {
	if a.open != kind {
		out = a.closeBlock(out)
		empty := ""
		b := anthropicBlock{Type: kind, Text: &empty}
		if kind == "thinking" {
			b = anthropicBlock{Type: kind, Thinking: &empty}
		}
		out = a.blockStart(out, b)
		a.open = kind
	}
	return a.blockDelta(out, d)
}

func (a *anthropicWriter) blockStart(out []byte, b anthropicBlock) []byte {
	return sseEvent(out, "content_block_start", struct {
		Type         string         `json:"type"`
		Index        int            `json:"index"`
		ContentBlock anthropicBlock `json:"content_block"`
	}{"content_block_start", a.index, b})
}

func (a *anthropicWriter) blockDelta(out []byte, d anthropicDelta) []byte {
	return sseEvent(out, "content_block_delta", struct {
		Type  string         `json:"type"`
		Index int            `json:"index"`
		Delta anthropicDelta `json:"delta"`
	}{"content_block_delta", a.index, d})
}

func (a *anthropicWriter) blockStop(out []byte) []byte {
	out = sseEvent(out, "content_block_stop", struct {
		Type  string `json:"type"`
		Index int    `json:"index"`
	}{"content_block_stop", a.index})
	a.index++
	return out
}

// closeBlock stops the open text or thinking block, if any.
func (a *anthropicWriter) closeBlock(out []byte) []byte {
	if a.open == "" {
		return out
	}
	a.open = ""
	return a.blockStop(out)
}

// sendCalls writes the accumulated tool calls as tool_use blocks, once.
func (a *anthropicWriter) sendCalls(out []byte) []byte {
	if a.callsSent || len(a.calls) == 0 {
		return out
	}
	a.callsSent = true
	out = a.closeBlock(out)
	for _, b := range a.toolBlocks() {
		input, _ := json.Marshal(b.Input)
		b.Input = map[string]any{}
		out = a.blockStart(out, b)
		out = a.blockDelta(out, anthropicDelta{Type: "input_json_delta", PartialJSON: string(input)})
		out = a.blockStop(out)
	}
	return out
}

// final ends the message: the calls not yet sent, the open block's stop,
// message_delta with the backend's counts, message_stop.
func (a *anthropicWriter) final(out []byte) []byte {
	a.done = true
	out = a.start(out)
	out = a.sendCalls(out)
	out = a.closeBlock(out)
	out = sseEvent(out, "message_delta", struct {
		Type  string `json:"type"`
		Delta struct {
			StopReason   string `json:"stop_reason,omitempty"`
			StopSequence string `json:"stop_sequence,omitempty"`
		} `json:"delta"`
		Usage anthropicUsage `json:"usage"`
	}{Type: "message_delta", Delta: struct {
		StopReason   string `json:"stop_reason,omitempty"`
		StopSequence string `json:"stop_sequence,omitempty"`
	}{a.stopReason(a.callsSent), a.stopSeq}, Usage: a.usage()})
	return sseEvent(out, "message_stop", struct {
		Type string `json:"type"`
	}{"message_stop"})
}
