// Package limitsapi serves GET /api/limits: each key's limits, what is
// left of them and what it spent this minute, UTC day and UTC month,
// fleet-wide (limits.Status). A client key sees only its own; an admin
// sees every key's, the config file's and the bucket's, or one with
// ?key_id=. droverctl keys list and the dashboard's Limits panel read it.
package limitsapi

import (
	"encoding/json"
	"fmt"
	"net/http"

	"github.com/go-chi/chi/v5"

	"github.com/droverhq/drover/pkg/apikey"
	"github.com/droverhq/drover/services/proxy/internal/auth"
	"github.com/droverhq/drover/services/proxy/internal/limits"
	"github.com/droverhq/drover/services/proxy/internal/ollamaapi"
)

// StatusSource tells a key's limits status (the replica's limits ledger).
type StatusSource interface {
	Status(p auth.Principal) limits.Status
}

// API is /api/limits.
type API struct {
	Source StatusSource
	// Principals lists every key the replica knows (auth.Keys.Principals).
	Principals func() []auth.Principal
}

// Routes mounts GET /api/limits on r.
func (a *API) Routes(r chi.Router) {
	r.Get("/api/limits", a.serve)
}

// All is the admin's answer without ?key_id=: every key's status, by id.
type All struct {
	Keys []limits.Status `json:"keys"`
}

func (a *API) serve(w http.ResponseWriter, r *http.Request) {
	who := auth.FromContext(r.Context())
	id := r.URL.Query().Get("key_id")
	if id != "" {
		if err := apikey.ValidID(id); err != nil {
			ollamaapi.WriteError(w, http.StatusBadRequest, err.Error())
			return
		}
	}
	switch {
	case !who.Admin():
		if id != "" && id != who.ID {
			ollamaapi.WriteError(w, http.StatusForbidden, fmt.Sprintf("key %s may see only its own limits, not key %s's: that needs the admin role", who.ID, id))
			return
		}
		writeJSON(w, a.Source.Status(who))
	case id == "":
		out := All{Keys: []limits.Status{}}
		for _, p := range a.Principals() {
			out.Keys = append(out.Keys, a.Source.Status(p))
		}
		writeJSON(w, out)
	default:
		for _, p := range a.Principals() {
			if p.ID == id {
				writeJSON(w, a.Source.Status(p))
				return
			}
		}
		ollamaapi.WriteError(w, http.StatusNotFound, "no key "+id)
	}
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	json.NewEncoder(w).Encode(v) //nolint:errcheck // the client may be gone
}
