package analytics

import (
	"net/http"
	"net/url"
)

// Scope says whose usage a request may read: the id of the key that made
// it, and whether that key may read every key's usage (all) or only its
// own. The proxy builds it from the request's authenticated principal; this
// package never authenticates.
type Scope func(r *http.Request) (keyID string, all bool)

// AllKeys is the scope of a caller that may read every key's usage, for
// tools that already decided who may reach the routes.
func AllKeys(*http.Request) (string, bool) { return "", true }

// Caller is who asked, as the scope saw it, and what it may read.
type Caller struct {
	KeyID string `json:"key_id,omitempty"`
	// AllKeys is true when the caller may read every key's usage; false
	// when every answer is limited to its own key.
	AllKeys bool `json:"all_keys"`
}

// Deprecation of ?api_key= as the name of the key id filter: the
// Deprecation header (RFC 9745) carries the day it was deprecated.
const (
	deprecatedKeyParam = "api_key"
	keyParam           = "key_id"
	deprecatedSince    = "@1796515200" // 2026-12-06
	deprecationWarning = `299 - "api_key is a deprecated name of the key_id filter (a key id, not a credential); use key_id"`
)

// keyFilter reads the key id filter from the query (key_id, or its
// deprecated alias api_key) and applies the caller's scope to it.
func (h *Handler) keyFilter(w http.ResponseWriter, r *http.Request, q url.Values) (string, Caller, bool) {
	keyID := q.Get(keyParam)
	if q.Has(deprecatedKeyParam) {
		w.Header().Set("Deprecation", deprecatedSince)
		w.Header().Set("Warning", deprecationWarning)
		old := q.Get(deprecatedKeyParam)
		if q.Has(keyParam) && old != keyID {
			writeError(w, http.StatusBadRequest, "key_id and its deprecated alias api_key name different keys; send key_id alone")
			return "", Caller{}, false
		}
		keyID = old
	}
	return h.scoped(w, r, keyID)
}

// scoped applies the caller's scope to the key id filter asked for:
// a caller limited to its own key gets its own key id as the filter, and
// 403 when it asked for another. It writes the refusal itself.
func (h *Handler) scoped(w http.ResponseWriter, r *http.Request, asked string) (string, Caller, bool) {
	if h.scope == nil {
		writeError(w, http.StatusForbidden, "usage is private: this server has no usage scope configured")
		return "", Caller{}, false
	}
	own, all := h.scope(r)
	caller := Caller{KeyID: own, AllKeys: all}
	switch {
	case all:
		return asked, caller, true
	case own == "":
		// An empty filter means every key: never for a caller limited to
		// its own key, whatever went wrong upstream.
		writeError(w, http.StatusForbidden, "usage is private and this request carries no key id")
		return "", caller, false
	case asked != "" && asked != own:
		writeError(w, http.StatusForbidden, "key "+own+" may read only its own usage")
		return "", caller, false
	}
	return own, caller, true
}
