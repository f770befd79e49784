package openaiapi

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"

	"github.com/go-chi/chi/v5"

	"github.com/droverhq/drover/services/proxy/internal/auth"
	"github.com/droverhq/drover/services/proxy/internal/backend"
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
}

// generation serves chat and text completions. Every request field goes to
// the backend as sent, except that a stream whose client did not ask for
// usage asks for it anyway, and the usage chunk that brings is taken out
// again on the way back.
func (h *Handler) generation(route string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		body, ok := readBody(w, r)
		if !ok {
			return
		}
		hd, ok := parseHead(w, body)
		if !ok {
			return
		}
		req := h.request(r, route, body, hd)
		if hd.Stream && !hd.wantsUsage() {
			req.Prepare = func(_ *backend.Backend, model string) (string, []byte, error) {
				out, err := withUsage(body, model, hd)
				return route, out, err
			}
			req.Transform = func(_ *backend.Backend, status int, _ http.Header, client io.Writer) io.WriteCloser {
				if status != http.StatusOK {
					return nil
				}
				return dropUsage(client)
			}
		}
		h.Forward.Serve(w, r, req)
	}
}

func (h *Handler) request(r *http.Request, route string, body []byte, hd head) *forward.Request {
	req := &forward.Request{
		Route:  route,
		Method: http.MethodPost,
		Path:   route,
		Body:   body,
		Model:  hd.Model,
		Stream: hd.Stream,
		APIKey: auth.KeyID(r.Context()),
		Tokens: CountUsage(hd.Stream),
		Error:  WriteError,
	}
	if hd.Stream {
		req.Complete = streamDone
	}
	return req
}

func (h *Handler) embeddings(w http.ResponseWriter, r *http.Request) {
	body, ok := readBody(w, r)
	if !ok {
		return
	}
	hd, ok := parseHead(w, body)
	if !ok {
		return
	}
	hd.Stream = false
	h.Forward.Serve(w, r, h.request(r, "/v1/embeddings", body, hd))
}

var openAIOnly = []backend.Type{backend.TypeOpenAI}

// rerank goes to OpenAI-type backends (llama.cpp and vLLM serve
// /v1/rerank); Ollama has no rerank, so a model only Ollama backends have
// is a 501, not a 404.
func (h *Handler) rerank(w http.ResponseWriter, r *http.Request) {
	body, ok := readBody(w, r)
	if !ok {
		return
	}
	hd, ok := parseHead(w, body)
	if !ok {
		return
	}
	if _, err := h.Fleet.Candidates(r.Context(), hd.Model, openAIOnly, nil); errors.Is(err, fleet.ErrModelNotFound) {
		if _, err := h.Fleet.Candidates(r.Context(), hd.Model, nil, nil); !errors.Is(err, fleet.ErrModelNotFound) {
			WriteError(w, http.StatusNotImplemented, fmt.Sprintf("rerank is not supported for model '%s': no backend serving it offers /v1/rerank", hd.Model))
			return
		}
	}
	hd.Stream = false
	req := h.request(r, "/v1/rerank", body, hd)
	req.Kinds = openAIOnly
	h.Forward.Serve(w, r, req)
}
