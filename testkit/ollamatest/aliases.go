package ollamatest

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync"
)

// aliasStore is the fake's server-side aliases (/api/experimental/aliases),
// without prefix matching: Ollama's store as its handlers show it.
type aliasStore struct {
	mu      sync.Mutex            // guards entries
	entries map[string]aliasEntry // by normalised alias
}

type aliasEntry struct {
	Alias          string `json:"alias"`
	Target         string `json:"target"`
	PrefixMatching bool   `json:"prefix_matching,omitempty"`
}

// aliasDisplay is Ollama's displayAliasName: the shortest form without a
// :latest tag.
func aliasDisplay(n modelName) string {
	s := n.short()
	if strings.EqualFold(n.tag, defaultTag) {
		s = s[:strings.LastIndex(s, ":")]
	}
	return s
}

// serveStatus is GET /api/status with cloud models allowed, as a server
// without OLLAMA_NO_CLOUD answers it.
func (s *Server) serveStatus(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet {
		methodNotAllowed(w, "GET")
		return
	}
	writeRaw(w, http.StatusOK, []byte(`{"cloud":{"disabled":false,"source":"none"}}`))
}

// serveAliases is GET, POST and DELETE /api/experimental/aliases.
func (s *Server) serveAliases(w http.ResponseWriter, r *http.Request) {
	st := &s.aliases
	switch r.Method {
	case http.MethodGet:
		st.mu.Lock()
		list := make([]aliasEntry, 0, len(st.entries))
		for _, e := range st.entries {
			list = append(list, e)
		}
		st.mu.Unlock()
		slices.SortFunc(list, func(a, b aliasEntry) int { return strings.Compare(a.Alias, b.Alias) })
		b, _ := json.Marshal(map[string]any{"aliases": list})
		writeRaw(w, http.StatusOK, b)
	case http.MethodPost:
		var req aliasEntry
		if !bindAlias(w, r, &req) {
			return
		}
		req.Alias, req.Target = strings.TrimSpace(req.Alias), strings.TrimSpace(req.Target)
		if req.Alias == "" || req.Target == "" {
			writeError(w, http.StatusBadRequest, "alias and target are required")
			return
		}
		target, alias := parseName(req.Target), parseName(req.Alias)
		switch {
		case !target.valid():
			writeError(w, http.StatusBadRequest, fmt.Sprintf("target %q is invalid", req.Target))
			return
		case !alias.valid():
			writeError(w, http.StatusBadRequest, fmt.Sprintf("alias %q is invalid", req.Alias))
			return
		case strings.EqualFold(aliasDisplay(alias), aliasDisplay(target)):
			writeError(w, http.StatusBadRequest, "alias cannot point to itself")
			return
		case s.lookup(req.Alias) != nil:
			writeError(w, http.StatusBadRequest, fmt.Sprintf("alias %q conflicts with existing model", req.Alias))
			return
		}
		e := aliasEntry{Alias: aliasDisplay(alias), Target: aliasDisplay(target)}
		st.mu.Lock()
		if st.entries == nil {
			st.entries = map[string]aliasEntry{}
		}
		st.entries[strings.ToLower(e.Alias)] = e
		st.mu.Unlock()
		b, _ := json.Marshal(e)
		writeRaw(w, http.StatusOK, b)
	case http.MethodDelete:
		var req struct {
			Alias string `json:"alias"`
		}
		if !bindAlias(w, r, &req) {
			return
		}
		req.Alias = strings.TrimSpace(req.Alias)
		if req.Alias == "" {
			writeError(w, http.StatusBadRequest, "alias is required")
			return
		}
		key := strings.ToLower(aliasDisplay(parseName(req.Alias)))
		st.mu.Lock()
		_, ok := st.entries[key]
		delete(st.entries, key)
		st.mu.Unlock()
		if !ok {
			writeError(w, http.StatusNotFound, fmt.Sprintf("alias %q not found", req.Alias))
			return
		}
		writeRaw(w, http.StatusOK, []byte(`{"deleted":true}`))
	default:
		methodNotAllowed(w, "GET, POST, DELETE")
	}
}

// bindAlias decodes as gin's ShouldBindJSON: an empty body is "missing
// request body".
func bindAlias(w http.ResponseWriter, r *http.Request, v any) bool {
	err := json.NewDecoder(r.Body).Decode(v)
	switch {
	case errors.Is(err, io.EOF):
		writeError(w, http.StatusBadRequest, "missing request body")
	case err != nil:
		writeError(w, http.StatusBadRequest, err.Error())
	default:
		return true
	}
	return false
}
