// Package anthropicapi serves Anthropic's Messages API (POST /v1/messages)
// over the fleet: a request goes to one backend through the router, by its
// model, as /api/chat does, and the answer (one message, or Anthropic's SSE
// events) is passed through from an Ollama backend, or translated from and
// to a chat completion for an OpenAI-type one (by its dialect). Errors
// Drover answers itself are in Anthropic's shape with the types Ollama's
// middleware gives each status.
package anthropicapi

import (
	"encoding/json"
	"net/http"

	"github.com/droverhq/drover/services/proxy/internal/translate"
)

// Route is the one route this package serves.
const Route = "/v1/messages"

// apiError is Anthropic's error object,
// {"type":"error","error":{"type","message"},"request_id"}.
type apiError struct {
	Type  string `json:"type"`
	Error struct {
		Type    string `json:"type"`
		Message string `json:"message"`
	} `json:"error"`
	RequestID string `json:"request_id,omitempty"`
}

// WriteError writes msg in Anthropic's error shape with the type status
// has there, as Ollama answers errors after its handler ran
// (Content-Type application/json, a trailing newline).
func WriteError(w http.ResponseWriter, status int, msg string) {
	var e apiError
	e.Type = "error"
	e.Error.Type, e.Error.Message = translate.AnthropicErrorType(status), msg
	e.RequestID = translate.NewAnthropicID("req")
	b, _ := json.Marshal(e)
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	w.Write(append(b, '\n')) //nolint:errcheck // the client may be gone
}

// badRequest is the 400 of Ollama's middleware, which validates before its
// handler runs (gin's AbortWithStatusJSON: charset, no trailing newline).
func badRequest(w http.ResponseWriter, msg string) {
	var e apiError
	e.Type = "error"
	e.Error.Type, e.Error.Message = translate.AnthropicErrorType(http.StatusBadRequest), msg
	e.RequestID = translate.NewAnthropicID("req")
	b, _ := json.Marshal(e)
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.WriteHeader(http.StatusBadRequest)
	w.Write(b) //nolint:errcheck // the client may be gone
}
