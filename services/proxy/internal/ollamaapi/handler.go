package ollamaapi

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"time"

	"github.com/go-chi/chi/v5"

	"github.com/droverhq/drover/services/proxy/internal/auth"
	"github.com/droverhq/drover/services/proxy/internal/dialect"
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
	r.Head("/api/tags", h.tags)
	r.Get("/api/ps", h.ps)
	r.Get("/api/ps_details", h.psDetails)
	r.Post("/api/show", h.show)
	r.Post("/api/chat", h.inference("/api/chat", "ChatRequest"))
	r.Post("/api/generate", h.inference("/api/generate", "GenerateRequest"))
	r.Post("/api/embed", h.inference("/api/embed", "EmbedRequest"))
	r.Post("/api/embeddings", h.inference("/api/embeddings", "EmbeddingRequest"))
	r.Post("/api/pull", h.progress("/api/pull", "pull", false))
	r.Post("/api/push", h.progress("/api/push", "push", true))
	r.Post("/api/create", h.progress("/api/create", "create", false))
	r.Post("/api/copy", h.copyModel)
	r.Delete("/api/delete", h.deleteModel)
	r.Head("/api/blobs/{digest}", h.blobExists)
	r.Post("/api/blobs/{digest}", h.blobUpload)
	r.Get("/api/status", h.status)
	r.Get(aliasesRoute, h.aliasesList)
	r.Post(aliasesRoute, h.aliasesWrite("create alias"))
	r.Delete(aliasesRoute, h.aliasesWrite("delete alias"))
}

func running(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.WriteHeader(http.StatusOK)
	if r.Method != http.MethodHead {
		w.Write([]byte("Ollama is running")) //nolint:errcheck
	}
}

// inference routes one request to one backend through the router; the
// backend's dialect says how it is sent there and read back.
func (h *Handler) inference(route, kind string) http.HandlerFunc {
	embedding := route == "/api/embed" || route == "/api/embeddings"
	return func(w http.ResponseWriter, r *http.Request) {
		body, hd, ok := h.request(w, r, route, kind)
		if !ok {
			return
		}
		if !auth.AllowsModel(r.Context(), hd.Model) {
			notAllowed(w, route, hd.Model)
			return
		}
		stream := hd.streaming() && !embedding
		need := ""
		if load, unload := loadOnly(route, body); load {
			// Loading a model is for backends that load models on request;
			// a model only other backends serve is as loaded as it gets.
			if h.loadedAnyway(r.Context(), route, hd.Model) {
				w.Header().Set("Content-Type", "application/json; charset=utf-8")
				if stream {
					w.Header().Set("Content-Type", "application/x-ndjson")
				}
				w.Write(loadReply(route, hd.Model, unload, stream)) //nolint:errcheck // the client may be gone
				return
			}
			need = dialect.Load
		}
		writeErr := WriteError
		if embedding {
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
			Need:   need,
			Method: http.MethodPost,
			Body:   body,
			Model:  hd.Model,
			Stream: stream,
			APIKey: auth.KeyID(r.Context()),
			Error:  writeErr,
		})
	}
}

// seen is any JSON value, counted but not kept.
type seen struct{}

func (*seen) UnmarshalJSON([]byte) error { return nil }

// emptiness records whether a value is given: not absent, null or "" (nor
// [] when emptyList).
type emptiness struct{ emptyList, given bool }

func (e *emptiness) UnmarshalJSON(b []byte) error {
	v := bytes.TrimSpace(b) // compared as bytes: a string of it would be a copy
	e.given = !bytes.Equal(v, []byte("null")) && !bytes.Equal(v, []byte(`""`)) && (!bytes.Equal(v, []byte("[]")) || !e.emptyList)
	return nil
}

// loadOnly reports a request that only loads (or, with keep_alive 0,
// unloads) a model: a chat without messages, a generate without prompt, an
// embed without input.
//
// It looks without copying: a body is up to server.max_body_bytes, and a
// copy of its messages or prompt here would double what a request costs.
func loadOnly(route string, body []byte) (load, unload bool) {
	var req struct {
		Messages  []seen          `json:"messages"`
		Prompt    emptiness       `json:"prompt"`
		Images    []seen          `json:"images"`
		Input     emptiness       `json:"input"`
		KeepAlive json.RawMessage `json:"keep_alive"`
	}
	req.Input.emptyList = true
	if json.Unmarshal(body, &req) != nil {
		return false, false
	}
	switch route {
	case "/api/chat":
		load = len(req.Messages) == 0
	case "/api/generate":
		load = !req.Prompt.given && len(req.Images) == 0
	case "/api/embed":
		load = !req.Input.given
	case "/api/embeddings":
		load = !req.Prompt.given
	}
	ka := string(bytes.TrimSpace(req.KeepAlive))
	return load, ka == "0" || ka == `"0"` || ka == `"0s"`
}

// loadedAnyway reports a model no backend that loads models on request
// has, but one serving route does.
func (h *Handler) loadedAnyway(ctx context.Context, route, model string) bool {
	if _, err := h.Fleet.Candidates(ctx, model, nil, dialect.Load); !errors.Is(err, fleet.ErrModelNotFound) {
		return false
	}
	_, err := h.Fleet.Candidates(ctx, model, nil, route)
	return !errors.Is(err, fleet.ErrModelNotFound)
}

// loadReply is Ollama's answer to a request on route that only loads (or
// unloads) a model, for a model whose backends load their own.
func loadReply(route, model string, unload, stream bool) []byte {
	reason := "load"
	if unload {
		reason = "unload"
	}
	now := time.Now().UTC().Format(time.RFC3339Nano)
	var v any
	switch route {
	case "/api/chat":
		v = map[string]any{"model": model, "created_at": now, "message": map[string]string{"role": "assistant", "content": ""}, "done_reason": reason, "done": true}
	case "/api/generate":
		v = map[string]any{"model": model, "created_at": now, "response": "", "done": true, "done_reason": reason}
	case "/api/embed":
		v = map[string]any{"model": model, "embeddings": []any{}}
	default:
		v = map[string]any{"embedding": []any{}}
	}
	b, _ := json.Marshal(v)
	if stream {
		b = append(b, '\n')
	}
	return b
}
