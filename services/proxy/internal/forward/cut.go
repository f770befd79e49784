package forward

import (
	"encoding/json"
	"strings"
)

// A stream the backend cut ends, for the client, with an error in its own
// API's terms rather than looking like a short answer that ended well:
//
//   - NDJSON (Ollama's /api routes): a last line {"error":"..."}, as Ollama
//     writes when generation fails after the first chunk (server/routes.go,
//     streamResponse); the official client returns it as the stream's error.
//   - OpenAI's SSE (/v1/chat/completions, /v1/completions): an event
//     data: {"error":{"message":...,"type":"api_error",...}} (the error
//     object Ollama's OpenAI layer and OpenAI send) and no data: [DONE];
//     the OpenAI SDKs report an event with an "error" field as an error.
//   - Anthropic's SSE (/v1/messages): event: error with
//     {"type":"error","error":{"type":"api_error","message":...}}.
//   - The Responses API (/v1/responses): event: error with
//     {"type":"error","code":"server_error","message":...,"param":null,
//     "sequence_number":...}, numbered after the last event passed on.
//
// The event goes straight to the client, after whatever whole lines or
// events a translating filter already wrote; a line or event the cut left
// unfinished is ended first so the error stands on its own.

// streamError writes the error event for the stream the client of route is
// reading (its Content-Type, as the backend or the translating filter set
// it) and flushes it. seq is the error event's sequence_number on the
// Responses API.
func (o *output) streamError(route, msg string, seq int64) {
	ct := o.rw.Header().Get("Content-Type")
	var b []byte
	switch {
	case strings.HasPrefix(ct, "text/event-stream"):
		b = o.newEvent(b)
		b = appendSSEError(b, route, msg, seq)
	default:
		if o.wrote > 0 && o.last[1] != '\n' {
			b = append(b, '\n')
		}
		line, _ := json.Marshal(struct {
			Error string `json:"error"`
		}{msg})
		b = append(append(b, line...), '\n')
	}
	o.chunk(o, b, true) //nolint:errcheck // the client may be gone
}

// newEvent ends an unfinished SSE event: events are separated by a blank
// line.
func (o *output) newEvent(b []byte) []byte {
	switch {
	case o.wrote == 0 || (o.last == [2]byte{'\n', '\n'}):
	case o.last[1] == '\n':
		b = append(b, '\n')
	default:
		b = append(b, '\n', '\n')
	}
	return b
}

// appendSSEError appends the error event of route's API.
func appendSSEError(b []byte, route, msg string, seq int64) []byte {
	var v any
	switch {
	case route == "/v1/messages":
		type detail struct {
			Type    string `json:"type"`
			Message string `json:"message"`
		}
		v = struct {
			Type  string `json:"type"`
			Error detail `json:"error"`
		}{"error", detail{"api_error", msg}}
		b = append(b, "event: error\n"...)
	case strings.HasPrefix(route, "/v1/responses"):
		v = struct {
			Type     string  `json:"type"`
			Code     string  `json:"code"`
			Message  string  `json:"message"`
			Param    *string `json:"param"`
			Sequence int64   `json:"sequence_number"`
		}{Type: "error", Code: "server_error", Message: msg, Sequence: seq}
		b = append(b, "event: error\n"...)
	default:
		type detail struct {
			Message string  `json:"message"`
			Type    string  `json:"type"`
			Param   *string `json:"param"`
			Code    *string `json:"code"`
		}
		v = struct {
			Error detail `json:"error"`
		}{detail{Message: msg, Type: "api_error"}}
	}
	data, _ := json.Marshal(v)
	b = append(b, "data: "...)
	b = append(b, data...)
	return append(b, '\n', '\n')
}
