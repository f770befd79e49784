package fakeollama

import "net/http"

// serveOpenAI is the hook for Ollama's OpenAI-compatible /v1 routes; it
// reports whether it handled the request.
func (s *Server) serveOpenAI(w http.ResponseWriter, r *http.Request) bool {
	return false
}
