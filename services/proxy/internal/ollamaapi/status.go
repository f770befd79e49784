package ollamaapi

import (
	"encoding/json"
	"net/http"
)

// status answers GET /api/status for the fleet: Ollama's answer is whether
// this server may use ollama.com cloud models ({"cloud":{"disabled",
// "source"}}), so the fleet's is each reachable Ollama backend's, merged.
// Cloud is disabled when any backend has it disabled (a request for a cloud
// model could land there), with that backend's source; otherwise it is the
// first backend's answer. Fields Drover does not know are the first
// backend's.
func (h *Handler) status(w http.ResponseWriter, r *http.Request) {
	targets := h.targets(r.Context(), "/api/status", "", false)
	if len(targets) == 0 {
		WriteError(w, http.StatusServiceUnavailable, "no backend is reachable")
		return
	}
	var merged map[string]json.RawMessage
	var cloud struct {
		Disabled bool   `json:"disabled"`
		Source   string `json:"source"`
	}
	failed := map[string]string{}
	for _, res := range h.fanSimple(r.Context(), targets, http.MethodGet, "/api/status", nil) {
		var doc map[string]json.RawMessage
		if res.err != nil || res.status != http.StatusOK || json.Unmarshal(res.body, &doc) != nil {
			failed[res.b.Name] = resultError(res)
			continue
		}
		var c struct {
			Disabled bool   `json:"disabled"`
			Source   string `json:"source"`
		}
		json.Unmarshal(doc["cloud"], &c) //nolint:errcheck // a backend without it has cloud enabled
		if merged == nil || (c.Disabled && !cloud.Disabled) {
			cloud = c
		}
		if merged == nil {
			merged = doc
		}
	}
	if merged == nil {
		WriteError(w, http.StatusInternalServerError, describeFailures("status", failed, nil))
		return
	}
	merged["cloud"], _ = json.Marshal(cloud)
	b, _ := json.Marshal(merged)
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.WriteHeader(http.StatusOK)
	w.Write(b) //nolint:errcheck // the client may be gone
}

// resultError words one backend's failed answer.
func resultError(r simpleResult) string {
	if r.err != nil {
		return r.err.Error()
	}
	return errorText(r.body, r.status)
}
