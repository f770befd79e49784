// Package openaiapi serves the OpenAI API under /v1 over the whole fleet:
// chat and text completions, embeddings, rerank, responses and images go to
// one backend through the router (Ollama backends' own /v1 endpoints, OpenAI-type
// backends' /v1 endpoints), and /v1/models merges every backend's list.
package openaiapi

import (
	"bytes"
	"encoding/json"
	"errors"
	"net/http"
	"strings"

	"github.com/droverhq/drover/services/proxy/internal/forward"
)

// apiError is OpenAI's error object.
type apiError struct {
	Message string  `json:"message"`
	Type    string  `json:"type"`
	Param   *string `json:"param"`
	Code    *string `json:"code"`
}

// WriteError writes OpenAI's error shape,
// {"error":{"message","type","param","code"}}, with the type and code
// OpenAI uses for status. A 429 is a key's limit (limits.Refusal, worded
// as OpenAI words them): insufficient_quota for a spent budget, else
// rate_limit_exceeded of type requests or tokens.
func WriteError(w http.ResponseWriter, status int, msg string) {
	typ, code := "invalid_request_error", ""
	switch {
	case status == http.StatusUnauthorized:
		code = "invalid_api_key"
	case status == http.StatusForbidden:
		code = "insufficient_permissions"
	case status == http.StatusNotFound && strings.Contains(msg, "model"):
		code = "model_not_found"
	case status == http.StatusNotImplemented:
		code = "not_implemented"
	case status == http.StatusRequestEntityTooLarge:
		code = "request_too_large"
	case status == http.StatusTooManyRequests && strings.Contains(msg, "exceeded your current quota"):
		// A spent budget (limits.Refusal.Budget): OpenAI's wording and code.
		typ, code = "insufficient_quota", "insufficient_quota"
	case status == http.StatusTooManyRequests:
		// A rate limit: OpenAI types these by what ran out.
		typ, code = "requests", "rate_limit_exceeded"
		if strings.Contains(msg, "tokens per min") {
			typ = "tokens"
		}
	case status >= 500:
		typ = "server_error"
	}
	writeError(w, status, apiError{Message: msg, Type: typ, Code: strPtr(code)})
}

func writeError(w http.ResponseWriter, status int, e apiError) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	b, _ := json.Marshal(map[string]apiError{"error": e})
	w.Write(append(b, '\n')) //nolint:errcheck // the client may be gone
}

func strPtr(s string) *string {
	if s == "" {
		return nil
	}
	return &s
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v) //nolint:errcheck // the client may be gone
}

// readRequest reads a request's body and head, answering errors in this
// API's format; ok is false once the request has been answered.
func readRequest(w http.ResponseWriter, r *http.Request) (hd head, body []byte, ok bool) {
	if body, ok = forward.ReadBody(w, r, WriteError); !ok {
		return hd, nil, false
	}
	hd, ok = parseHead(w, body)
	return hd, body, ok
}

// head is the part of a request Drover reads; every other field goes to the
// backend untouched.
type head struct {
	Model            string          `json:"model"`
	Stream           bool            `json:"stream"`
	RawStreamOptions json.RawMessage `json:"stream_options"`
	StreamOptions    *struct {
		IncludeUsage bool `json:"include_usage"`
	} `json:"-"`
}

// parseHead reads model and stream, answering 400 the way OpenAI does when
// the body is not a JSON object or names no model.
func parseHead(w http.ResponseWriter, body []byte) (head, bool) {
	var h head
	trimmed := bytes.TrimSpace(body)
	if len(trimmed) == 0 || trimmed[0] != '{' {
		writeError(w, http.StatusBadRequest, apiError{Message: "We could not parse the JSON body of your request. The request body must be a JSON object.", Type: "invalid_request_error"})
		return h, false
	}
	if err := json.Unmarshal(trimmed, &h); err != nil {
		var typeErr *json.UnmarshalTypeError
		if errors.As(err, &typeErr) && typeErr.Field != "" {
			writeError(w, http.StatusBadRequest, apiError{Message: "Invalid type for '" + typeErr.Field + "': expected " + typeErr.Type.String() + ", got " + typeErr.Value + ".", Type: "invalid_request_error", Param: strPtr(typeErr.Field), Code: strPtr("invalid_type")})
		} else {
			writeError(w, http.StatusBadRequest, apiError{Message: "We could not parse the JSON body of your request: " + err.Error(), Type: "invalid_request_error"})
		}
		return h, false
	}
	if len(h.RawStreamOptions) > 0 {
		if err := json.Unmarshal(h.RawStreamOptions, &h.StreamOptions); err != nil {
			writeError(w, http.StatusBadRequest, apiError{Message: "Invalid type for 'stream_options': expected an object.", Type: "invalid_request_error", Param: strPtr("stream_options"), Code: strPtr("invalid_type")})
			return h, false
		}
	}
	if h.Model == "" {
		writeError(w, http.StatusBadRequest, apiError{Message: "you must provide a model parameter", Type: "invalid_request_error", Param: strPtr("model")})
		return h, false
	}
	return h, true
}

// wantsUsage reports whether the client asked for the usage chunk itself.
func (h head) wantsUsage() bool { return h.StreamOptions != nil && h.StreamOptions.IncludeUsage }
