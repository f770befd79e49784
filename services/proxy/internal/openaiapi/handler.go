package openaiapi

import (
	"errors"
	"fmt"
	"log/slog"
	"net/http"

	"github.com/go-chi/chi/v5"

	"github.com/droverhq/drover/services/proxy/internal/auth"
	"github.com/droverhq/drover/services/proxy/internal/fleet"
	"github.com/droverhq/drover/services/proxy/internal/forward"
)

// Handler serves /v1/*.
type Handler struct {
	Fleet   *fleet.Fleet
	Forward *forward.Forwarder
	Log     *slog.Logger
}

// Routes mounts the OpenAI API on r.
func (h *Handler) Routes(r chi.Router) {
	r.Get("/v1/models", h.models)
	r.Get("/v1/models/*", h.model)
	r.Post("/v1/chat/completions", h.generation("/v1/chat/completions"))
	r.Post("/v1/completions", h.generation("/v1/completions"))
	r.Post("/v1/embeddings", h.embeddings)
	r.Post("/v1/rerank", h.rerank)
	r.Post("/v1/responses", h.passed("/v1/responses"))
	r.Post("/v1/images/generations", h.passed("/v1/images/generations"))
	r.Post("/v1/images/edits", h.passed("/v1/images/edits"))
}

// generation serves chat and text completions, embeddings serves
// embeddings: each to one backend through the router, whose dialect says
// how it is sent there and read back.
func (h *Handler) generation(route string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		hd, body, ok := readRequest(w, r)
		if !ok {
			return
		}
		h.Forward.Serve(w, r, h.request(r, route, body, hd))
	}
}

func (h *Handler) embeddings(w http.ResponseWriter, r *http.Request) {
	hd, body, ok := readRequest(w, r)
	if !ok {
		return
	}
	hd.Stream = false
	h.Forward.Serve(w, r, h.request(r, "/v1/embeddings", body, hd))
}

func (h *Handler) request(r *http.Request, route string, body []byte, hd head) *forward.Request {
	return &forward.Request{
		Route:        route,
		Method:       http.MethodPost,
		Body:         body,
		Model:        hd.Model,
		Stream:       hd.Stream,
		IncludeUsage: hd.wantsUsage(),
		APIKey:       auth.KeyID(r.Context()),
		Error:        WriteError,
	}
}

// rerank goes to backends that serve /v1/rerank (llama.cpp and vLLM do,
// Ollama has none), so a model only other backends have is a 501, not a
// 404.
func (h *Handler) rerank(w http.ResponseWriter, r *http.Request) {
	hd, body, ok := readRequest(w, r)
	if !ok {
		return
	}
	if !auth.AllowsModel(r.Context(), hd.Model) {
		WriteError(w, http.StatusNotFound, fmt.Sprintf("model '%s' not found", hd.Model))
		return
	}
	if _, err := h.Fleet.Candidates(r.Context(), hd.Model, nil, "/v1/rerank"); errors.Is(err, fleet.ErrModelNotFound) {
		if _, err := h.Fleet.Candidates(r.Context(), hd.Model, nil); !errors.Is(err, fleet.ErrModelNotFound) {
			WriteError(w, http.StatusNotImplemented, fmt.Sprintf("rerank is not supported for model '%s': no backend serving it offers /v1/rerank", hd.Model))
			return
		}
	}
	hd.Stream = false
	h.Forward.Serve(w, r, h.request(r, "/v1/rerank", body, hd))
}

// passed serves the Responses and images routes, which backends take as
// they are (dialect/openai's responses.go). Drover's own errors there are
// worded as Ollama's middleware words every error of these routes: type
// "api_error", no code.
func (h *Handler) passed(route string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		hd, body, ok := readRequest(w, r)
		if !ok {
			return
		}
		req := h.request(r, route, body, hd)
		req.Error = writeAPIError
		h.Forward.Serve(w, r, req)
	}
}

func writeAPIError(w http.ResponseWriter, status int, msg string) {
	writeError(w, status, apiError{Message: msg, Type: "api_error"})
}
