package ollamatest

import (
	"encoding/json"
	"net/http"
)

// errorRewriter passes a handler's 200 answers through and rewrites its
// error answers ({"error": msg} with any other status) into another API's
// error body, as Ollama's OpenAI and Anthropic middlewares do.
type errorRewriter struct {
	http.ResponseWriter
	status int
	body   func(status int, msg string) []byte
}

func (e *errorRewriter) WriteHeader(status int) {
	e.status = status
	if status != http.StatusOK {
		e.Header().Set("Content-Type", "application/json")
	}
	e.ResponseWriter.WriteHeader(status)
}

func (e *errorRewriter) Write(b []byte) (int, error) {
	if e.status == 0 {
		e.WriteHeader(http.StatusOK)
	}
	if e.status == http.StatusOK {
		return e.ResponseWriter.Write(b)
	}
	var body struct {
		Error string `json:"error"`
	}
	if err := json.Unmarshal(b, &body); err != nil {
		return 0, err
	}
	if _, err := e.ResponseWriter.Write(e.body(e.status, body.Error)); err != nil {
		return 0, err
	}
	return len(b), nil
}

func (e *errorRewriter) Unwrap() http.ResponseWriter { return e.ResponseWriter }
