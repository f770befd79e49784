package ollamaapi

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"

	"github.com/droverhq/drover/services/proxy/internal/auth"
)

// notAllowed refuses a model outside the key's list exactly as a model no
// backend has: the key learns nothing about what else the fleet serves.
func notAllowed(w http.ResponseWriter, route, model string) {
	msg := fmt.Sprintf("model '%s' not found", model)
	if route == "/api/embed" || route == "/api/embeddings" {
		msg = fmt.Sprintf("model %q not found, try pulling it first", model)
	}
	WriteError(w, http.StatusNotFound, msg)
}

// allowedEntries keeps the list entries (Ollama's shape, "name" or
// "model") that the request's key may see.
func allowedEntries(ctx context.Context, entries []json.RawMessage) []json.RawMessage {
	who := auth.FromContext(ctx)
	if len(who.Models) == 0 {
		return entries
	}
	out := entries[:0:0]
	for _, raw := range entries {
		var m struct {
			Name  string `json:"name"`
			Model string `json:"model"`
		}
		json.Unmarshal(raw, &m) //nolint:errcheck // our own output; an unnamed entry is not shown
		if name := m.Name; (name != "" && who.AllowsModel(name)) || (name == "" && m.Model != "" && who.AllowsModel(m.Model)) {
			out = append(out, raw)
		}
	}
	return out
}
