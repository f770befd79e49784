package openaiapi

import (
	"context"
	"encoding/json"
	"net/http"
	"sort"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/sourcegraph/conc/iter"

	"github.com/droverhq/drover/services/proxy/internal/auth"
	"github.com/droverhq/drover/services/proxy/internal/backend"
	"github.com/droverhq/drover/services/proxy/internal/catalog"
)

// listTimeout bounds a live fan-out read; a slow backend is left out rather
// than holding up the whole list.
const listTimeout = 5 * time.Second

// modelEntry is one model of /v1/models. OpenAI-type backends' entries
// keep every field they sent (llama.cpp's status, vLLM's max_model_len).
type modelEntry struct {
	id  string
	raw json.RawMessage
}

// listed is an entry Drover makes itself, in OpenAI's field order.
type listed struct {
	ID      string `json:"id"`
	Object  string `json:"object"`
	Created int64  `json:"created"`
	OwnedBy string `json:"owned_by"`
}

// models is /v1/models: every backend's list read live (and kept in the
// fleet's cache) in OpenAI's shape whatever the backend's dialect,
// de-duplicated by name, plus the configured aliases that some backend can
// serve.
func (h *Handler) models(w http.ResponseWriter, r *http.Request) {
	entries, ok := h.entries(r.Context())
	entries = allowed(r.Context(), entries)
	if !ok {
		WriteError(w, http.StatusServiceUnavailable, "no backend is reachable")
		return
	}
	data := make([]json.RawMessage, len(entries))
	for i, e := range entries {
		data[i] = e.raw
	}
	writeJSON(w, http.StatusOK, map[string]any{"object": "list", "data": data})
}

// model is /v1/models/{id}.
func (h *Handler) model(w http.ResponseWriter, r *http.Request) {
	id := chi.URLParam(r, "*")
	entries, _ := h.entries(r.Context())
	for _, e := range allowed(r.Context(), entries) {
		if catalog.Normalize(e.id) == catalog.Normalize(id) {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusOK)
			w.Write(append(e.raw, '\n')) //nolint:errcheck // the client may be gone
			return
		}
	}
	WriteError(w, http.StatusNotFound, "The model '"+id+"' does not exist")
}

func (h *Handler) entries(ctx context.Context) ([]modelEntry, bool) {
	bs := h.Fleet.Reachable("/v1/models")
	ctx, cancel := context.WithTimeout(ctx, listTimeout)
	defer cancel()
	lists := iter.Map(bs, func(b **backend.Backend) []modelEntry {
		entries, err := h.backendModels(ctx, *b)
		if err != nil {
			h.Log.Debug("model list unavailable", "backend", (*b).Name, "err", err)
			return nil
		}
		return entries
	})
	seen := map[string]bool{}
	var out []modelEntry
	reached := len(h.Fleet.Backends) == 0
	for _, l := range lists {
		if l != nil {
			reached = true
		}
		for _, e := range l {
			if key := catalog.Normalize(e.id); !seen[key] {
				seen[key] = true
				out = append(out, e)
			}
		}
	}
	for _, a := range h.aliases(lists, bs) {
		if key := catalog.Normalize(a.id); !seen[key] {
			seen[key] = true
			out = append(out, a)
		}
	}
	return out, reached
}

// aliases lists the configured public names that a reachable backend can
// serve, sorted by name.
func (h *Handler) aliases(lists [][]modelEntry, bs []*backend.Backend) []modelEntry {
	has := map[string]map[string]bool{}
	for i, b := range bs {
		has[b.Name] = map[string]bool{}
		for _, e := range lists[i] {
			has[b.Name][catalog.Normalize(e.id)] = true
		}
	}
	var out []modelEntry
	for public, targets := range h.Fleet.Aliases() {
		for _, t := range targets {
			if has[t.Backend][catalog.Normalize(t.Model)] {
				raw, _ := json.Marshal(listed{ID: public, Object: "model", OwnedBy: "drover"})
				out = append(out, modelEntry{id: public, raw: raw})
				break
			}
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].id < out[j].id })
	return out
}

// backendModels reads b's model list in OpenAI's shape.
func (h *Handler) backendModels(ctx context.Context, b *backend.Backend) ([]modelEntry, error) {
	list, err := h.Fleet.ReadModels(ctx, b)
	if err != nil {
		return nil, err
	}
	out := make([]modelEntry, len(list.Models))
	for i, m := range list.Models {
		out[i] = modelEntry{id: m.Name, raw: b.Dialect.OpenAIEntry(m)}
	}
	return out, nil
}

// allowed keeps the entries the request's key may see.
func allowed(ctx context.Context, entries []modelEntry) []modelEntry {
	who := auth.FromContext(ctx)
	if len(who.Models) == 0 {
		return entries
	}
	var out []modelEntry
	for _, e := range entries {
		if who.AllowsModel(e.id) {
			out = append(out, e)
		}
	}
	return out
}
