package ollamaapi

import (
	"log/slog"
	"net/http"

	"github.com/go-chi/chi/v5"

	"github.com/droverhq/drover/services/proxy/internal/auth"
	"github.com/droverhq/drover/services/proxy/internal/backend"
	"github.com/droverhq/drover/services/proxy/internal/fleet"
	"github.com/droverhq/drover/services/proxy/internal/forward"
)

// Handler serves /api/*.
type Handler struct {
	Fleet   *fleet.Fleet
	Forward *forward.Forwarder
	Log     *slog.Logger
}

// Routes mounts the Ollama API on r.
func (h *Handler) Routes(r chi.Router) {
	r.Get("/", running)
	r.Head("/", running)
	r.Get("/api/version", h.version)
	r.Head("/api/version", h.version)
	r.Get("/api/tags", h.tags)
	r.Get("/api/ps", h.ps)
	r.Get("/api/ps_details", h.psDetails)
	r.Post("/api/show", h.show)
	r.Post("/api/chat", h.inference("/api/chat", "ChatRequest", countGeneration))
	r.Post("/api/generate", h.inference("/api/generate", "GenerateRequest", countGeneration))
	r.Post("/api/embed", h.inference("/api/embed", "EmbedRequest", countEmbedding))
	r.Post("/api/embeddings", h.inference("/api/embeddings", "EmbeddingRequest", countEmbedding))
	r.Post("/api/pull", h.progress("/api/pull", "pull", false))
	r.Post("/api/push", h.progress("/api/push", "push", true))
	r.Post("/api/create", h.progress("/api/create", "create", false))
	r.Post("/api/copy", h.copyModel)
	r.Delete("/api/delete", h.deleteModel)
	r.Head("/api/blobs/{digest}", h.blobExists)
	r.Post("/api/blobs/{digest}", h.blobUpload)
}

func running(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.WriteHeader(http.StatusOK)
	if r.Method != http.MethodHead {
		w.Write([]byte("Ollama is running")) //nolint:errcheck
	}
}

// ollamaOnly limits routing and fan-outs to Ollama backends; OpenAI-type
// backends get translated inference requests (a later layer) and never
// management calls.
var ollamaOnly = []backend.Type{backend.TypeOllama}

// inference routes one request to one backend through the router.
func (h *Handler) inference(route, kind string, tokens func(*forward.Meter) (in, out *int64)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		body, ok := readBody(w, r)
		if !ok {
			return
		}
		hd, ok := parseHead(w, body, kind)
		if !ok {
			return
		}
		if hd.Model == "" {
			// Ollama words this differently per route; let one answer.
			h.passAny(w, r, route, body)
			return
		}
		h.Forward.Serve(w, r, &forward.Request{
			Route:  route,
			Method: http.MethodPost,
			Path:   route,
			Body:   body,
			Model:  hd.Model,
			Stream: hd.streaming() && route != "/api/embed" && route != "/api/embeddings",
			APIKey: auth.KeyID(r.Context()),
			Kinds:  ollamaOnly,
			Tokens: tokens,
			Error:  WriteError,
		})
	}
}

// countGeneration reads Ollama's final chunk (or non-stream body). Ollama
// omits a zero count, so a finished response without one counts zero.
func countGeneration(m *forward.Meter) (in, out *int64) {
	if !m.Has("done", "true") {
		return nil, nil
	}
	i, _ := m.Count("prompt_eval_count")
	o, _ := m.Count("eval_count")
	return &i, &o
}

// countEmbedding reads an embed response's prompt_eval_count; embeddings
// produce no output tokens. The legacy /api/embeddings reports no count.
func countEmbedding(m *forward.Meter) (in, out *int64) {
	zero := int64(0)
	if i, ok := m.Count("prompt_eval_count"); ok {
		return &i, &zero
	}
	return nil, &zero
}
