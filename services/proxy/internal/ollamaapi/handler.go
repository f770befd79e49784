package ollamaapi

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"time"

	"github.com/go-chi/chi/v5"

	"github.com/droverhq/drover/services/proxy/internal/auth"
	"github.com/droverhq/drover/services/proxy/internal/backend"
	"github.com/droverhq/drover/services/proxy/internal/fleet"
	"github.com/droverhq/drover/services/proxy/internal/forward"
	"github.com/droverhq/drover/services/proxy/internal/openaiapi"
	"github.com/droverhq/drover/services/proxy/internal/translate"
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

// ollamaOnly limits fan-outs to Ollama backends: management calls never go
// to OpenAI-type backends, which get translated inference requests only.
var ollamaOnly = []backend.Type{backend.TypeOllama}

// inference routes one request to one backend of either type through the
// router. An Ollama backend gets the request as sent; an OpenAI-type one
// gets it translated (Prepare), and its answer is translated back
// (Transform) and counted in OpenAI's terms (Tokens).
func (h *Handler) inference(route, kind string, tokens func(*forward.Meter) (in, out *int64)) http.HandlerFunc {
	tk := translators[route]
	return func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		body, hd, ok := h.request(w, r, route, kind)
		if !ok {
			return
		}
		stream := hd.streaming() && route != "/api/embed" && route != "/api/embeddings"
		var kinds []backend.Type
		if load, unload := loadOnly(route, body); load {
			// Loading a model is Ollama's business; a model only
			// OpenAI-type backends serve is as loaded as it gets.
			if h.onlyOpenAI(r, hd.Model) {
				w.Header().Set("Content-Type", "application/json; charset=utf-8")
				if stream {
					w.Header().Set("Content-Type", "application/x-ndjson")
				}
				w.Write(translate.LoadReply(tk.kind, hd.Model, unload, stream)) //nolint:errcheck // the client may be gone
				return
			}
			kinds = ollamaOnly
		}
		var tr translate.Request // the last translation made, for Transform and Tokens
		writeErr := WriteError
		if route == "/api/embed" || route == "/api/embeddings" {
			// The embedding routes word an unknown model their own way.
			model := hd.Model
			writeErr = func(w http.ResponseWriter, status int, msg string) {
				if status == http.StatusNotFound {
					msg = fmt.Sprintf("model %q not found, try pulling it first", model)
				}
				WriteError(w, status, msg)
			}
		}
		h.Forward.Serve(w, r, &forward.Request{
			Route:  route,
			Method: http.MethodPost,
			Path:   route,
			Body:   body,
			Model:  hd.Model,
			Stream: stream,
			APIKey: auth.KeyID(r.Context()),
			Kinds:  kinds,
			Prepare: func(b *backend.Backend, model string) (string, []byte, error) {
				if b.Type != backend.TypeOpenAI {
					if fleet.Normalize(model) == fleet.Normalize(hd.Model) {
						return route, body, nil
					}
					out, err := forward.SetModel(body, model)
					return route, out, err
				}
				var err error
				tr, err = tk.request(body, model)
				return tr.Path, tr.Body, err
			},
			Transform: func(b *backend.Backend, status int, hdr http.Header, client io.Writer) io.WriteCloser {
				if b.Type != backend.TypeOpenAI {
					return nil
				}
				return translate.Response(tr, hd.Model, start, status, hdr, client)
			},
			Tokens: func(b *backend.Backend, m *forward.Meter) (in, out *int64) {
				if b.Type == backend.TypeOpenAI {
					return openaiapi.CountUsage(tr.Stream)(b, m)
				}
				return tokens(m)
			},
			Error: writeErr,
		})
	}
}

// translator is how one Ollama route goes to an OpenAI-type backend.
type translator struct {
	kind    translate.Kind
	request func(body []byte, model string) (translate.Request, error)
}

var translators = map[string]translator{
	"/api/chat":       {translate.Chat, translate.ChatRequest},
	"/api/generate":   {translate.Generate, translate.GenerateRequest},
	"/api/embed":      {translate.Embed, translate.EmbedRequest},
	"/api/embeddings": {translate.Embeddings, translate.EmbeddingsRequest},
}

// loadOnly reports a request that only loads (or, with keep_alive 0,
// unloads) a model: a chat without messages, a generate without prompt, an
// embed without input.
func loadOnly(route string, body []byte) (load, unload bool) {
	var req struct {
		Messages  []json.RawMessage `json:"messages"`
		Prompt    *string           `json:"prompt"`
		Images    []json.RawMessage `json:"images"`
		Input     json.RawMessage   `json:"input"`
		KeepAlive json.RawMessage   `json:"keep_alive"`
	}
	if json.Unmarshal(body, &req) != nil {
		return false, false
	}
	switch route {
	case "/api/chat":
		load = len(req.Messages) == 0
	case "/api/generate":
		load = (req.Prompt == nil || *req.Prompt == "") && len(req.Images) == 0
	case "/api/embed":
		in := string(bytes.TrimSpace(req.Input))
		load = in == "" || in == "null" || in == `""` || in == "[]"
	case "/api/embeddings":
		load = req.Prompt == nil || *req.Prompt == ""
	}
	ka := string(bytes.TrimSpace(req.KeepAlive))
	return load, ka == "0" || ka == `"0"` || ka == `"0s"`
}

// onlyOpenAI reports a model no Ollama backend has but an OpenAI-type one does.
func (h *Handler) onlyOpenAI(r *http.Request, model string) bool {
	if _, err := h.Fleet.Candidates(r.Context(), model, ollamaOnly, nil); !errors.Is(err, fleet.ErrModelNotFound) {
		return false
	}
	_, err := h.Fleet.Candidates(r.Context(), model, []backend.Type{backend.TypeOpenAI}, nil)
	return !errors.Is(err, fleet.ErrModelNotFound)
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
