package ollamaapi

import (
	"cmp"
	"encoding/json"
	"net/http"
	"slices"

	"github.com/droverhq/drover/services/proxy/internal/backend"
)

// Ollama's server-side aliases (/api/experimental/aliases) live in each
// server's own store, apart from Drover's aliases (config). For the fleet,
// a write goes to every reachable Ollama backend, folded into one answer as
// copy and delete are (answerSimple: a backend that has no such alias to
// delete is not a failure while another deleted it), except that an alias
// any backend refuses is refused and undone where it was made; the list is every
// backend's list merged, one entry per alias (the first backend's when they
// disagree), sorted by alias as Ollama sorts it.
const aliasesRoute = "/api/experimental/aliases"

func (h *Handler) aliasesWrite(verb string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		body, ok := readBody(w, r)
		if !ok {
			return
		}
		targets := h.targets(r.Context(), aliasesRoute, "", false)
		if len(targets) == 0 {
			WriteError(w, http.StatusServiceUnavailable, "no backend is reachable")
			return
		}
		results := h.fanSimple(r.Context(), targets, r.Method, aliasesRoute, body)
		if r.Method == http.MethodPost {
			if refused, ok := h.undoRefusedCreate(r, results); ok {
				relay(w, refused)
				return
			}
		}
		answerSimple(w, verb, results)
	}
}

// undoRefusedCreate: an alias some backend refuses with a 4xx (its name is
// a model there, say) is refused for the fleet, so the backends that
// created it have it deleted again. It returns the refusal to relay.
func (h *Handler) undoRefusedCreate(r *http.Request, results []simpleResult) (simpleResult, bool) {
	var refused *simpleResult
	var created []*backend.Backend
	var alias json.RawMessage
	for i, res := range results {
		switch {
		case res.err == nil && res.status >= 400 && res.status < 500 && refused == nil:
			refused = &results[i]
		case res.err == nil && res.status == http.StatusOK:
			var e struct {
				Alias json.RawMessage `json:"alias"`
			}
			if json.Unmarshal(res.body, &e) == nil && e.Alias != nil {
				created, alias = append(created, res.b), e.Alias
			}
		}
	}
	if refused == nil {
		return simpleResult{}, false
	}
	if len(created) > 0 {
		undo, _ := json.Marshal(map[string]json.RawMessage{"alias": alias})
		for _, res := range h.fanSimple(r.Context(), created, http.MethodDelete, aliasesRoute, undo) {
			if res.err != nil || res.status != http.StatusOK {
				h.Log.Warn("undoing a refused alias", "backend", res.b.Name, "error", resultError(res))
			}
		}
	}
	return *refused, true
}

func (h *Handler) aliasesList(w http.ResponseWriter, r *http.Request) {
	targets := h.targets(r.Context(), aliasesRoute, "", false)
	if len(targets) == 0 {
		WriteError(w, http.StatusServiceUnavailable, "no backend is reachable")
		return
	}
	type entry struct {
		Alias string `json:"alias"`
		raw   json.RawMessage
	}
	var list []entry
	seen := map[string]bool{}
	failed := map[string]string{}
	answered := false
	for _, res := range h.fanSimple(r.Context(), targets, http.MethodGet, aliasesRoute, nil) {
		var doc struct {
			Aliases []json.RawMessage `json:"aliases"`
		}
		if res.err != nil || res.status != http.StatusOK || json.Unmarshal(res.body, &doc) != nil {
			failed[res.b.Name] = resultError(res)
			continue
		}
		answered = true
		for _, raw := range doc.Aliases {
			var e entry
			if json.Unmarshal(raw, &e) != nil || seen[e.Alias] {
				continue
			}
			seen[e.Alias] = true
			e.raw = raw
			list = append(list, e)
		}
	}
	if !answered {
		WriteError(w, http.StatusInternalServerError, describeFailures("list aliases", failed, nil))
		return
	}
	slices.SortStableFunc(list, func(a, b entry) int { return cmp.Compare(a.Alias, b.Alias) })
	out := struct {
		Aliases []json.RawMessage `json:"aliases"`
	}{Aliases: make([]json.RawMessage, 0, len(list))}
	for _, e := range list {
		out.Aliases = append(out.Aliases, e.raw)
	}
	b, _ := json.Marshal(out)
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.WriteHeader(http.StatusOK)
	w.Write(b) //nolint:errcheck // the client may be gone
}
