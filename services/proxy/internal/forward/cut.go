package forward

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
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
	o.chunk(o, b, true) //nolint:errcheck // the client may be gone //nolint:errcheck // the client may be gone
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

// errShort is why an answer the backend ended cleanly before its end was
// cut.
var errShort = errors.New("the backend's answer ended before it was whole")

// streamFault words reason for a stream's error event: as translate's
// streams word a short one (translate.TruncatedMessage), else the break.
func streamFault(reason error) string {
	if errors.Is(reason, errShort) {
		return "the backend's stream ended before the answer did"
	}
	return fmt.Sprintf("the backend's stream broke (%v)", reason)
}

// ender is a translating filter (package translate's streams) that ends a
// stream its backend ended early itself, in the client's API's terms:
// Whole reports whether what it was given so far makes a whole answer (a
// finish_reason without data: [DONE]), which Close then ends normally;
// otherwise Close ends it with the client's error, or it already did when
// the backend's error came.
type ender interface{ Whole() bool }

func isEnder(filter io.WriteCloser) bool {
	_, ok := filter.(ender)
	return ok
}

// filterWhole reports whether a translating filter judges its stream
// whole; false for any other filter.
func filterWhole(filter io.WriteCloser) bool {
	e, ok := filter.(ender)
	return ok && e.Whole()
}

// endsInError reports whether the last line of a stream's tail is an error
// its backend sent in-band: Ollama's {"error":"..."} line, OpenAI's
// data: {"error":{...}}, Anthropic's or the Responses API's event whose
// "type" is "error". A quoted key followed by a colon cannot occur inside
// a JSON string.
func endsInError(tail []byte) bool {
	tail = bytes.TrimRight(tail, " \t\r\n")
	last := tail[bytes.LastIndexByte(tail, '\n')+1:]
	return bytes.Contains(last, []byte(`"error":{`)) || bytes.Contains(last, []byte(`"error":"`)) || bytes.Contains(last, []byte(`"type":"error"`))
}
