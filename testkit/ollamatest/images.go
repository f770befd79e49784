package ollamatest

import (
	"fmt"
	"net/http"
)

// imageRequest is the part of Ollama's openai.ImageGenerationRequest and
// ImageEditRequest the fake checks.
type imageRequest struct {
	Model  string `json:"model"`
	Prompt string `json:"prompt"`
	Image  string `json:"image"`
}

// serveImages is POST /v1/images/generations and /v1/images/edits as
// Ollama's middleware checks them. The fake has no image models: a model it
// has answers as Ollama 0.17.4 answers for a text model, 200 with an empty
// NDJSON body.
func (s *Server) serveImages(w http.ResponseWriter, r *http.Request, edit bool) {
	if r.Method != http.MethodPost {
		methodNotAllowed(w, "POST")
		return
	}
	var req imageRequest
	if !decodeOpenAI(w, r, &req) {
		return
	}
	switch {
	case req.Prompt == "":
		badOpenAIRequest(w, "prompt is required")
		return
	case req.Model == "":
		badOpenAIRequest(w, "model is required")
		return
	case edit && req.Image == "":
		badOpenAIRequest(w, "image is required")
		return
	}
	ew := openaiErrors(w)
	if s.serverFailure(ew) {
		return
	}
	if s.lookup(req.Model) == nil {
		writeError(ew, http.StatusNotFound, fmt.Sprintf("model '%s' not found", req.Model))
		return
	}
	w.Header().Set("Content-Type", "application/x-ndjson")
	w.WriteHeader(http.StatusOK)
	http.NewResponseController(w).Flush() //nolint:errcheck // Ollama's answer is chunked
}
