package server

import (
	"net/http"
	"slices"
	"strings"
)

// corsHeaders are the request headers a browser may send cross-origin:
// credentials and what the three APIs' clients set.
const corsHeaders = "Authorization, Content-Type, X-Api-Key, Anthropic-Version, Anthropic-Beta, OpenAI-Organization, OpenAI-Project, X-Stainless-Lang, X-Stainless-Retry-Count"

// cors answers browsers from the configured origins ("*" for any): their
// preflight OPTIONS gets 204 without a key, and their requests get
// Access-Control-Allow-Origin. Other origins get nothing, so a browser
// refuses to hand them the answer. No origin is configured by default.
func cors(origins []string) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		if len(origins) == 0 {
			return next
		}
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			origin := r.Header.Get("Origin")
			if origin == "" || !(slices.Contains(origins, "*") || slices.Contains(origins, strings.TrimRight(origin, "/"))) {
				next.ServeHTTP(w, r)
				return
			}
			h := w.Header()
			h.Set("Access-Control-Allow-Origin", origin)
			h.Add("Vary", "Origin")
			if r.Method == http.MethodOptions && r.Header.Get("Access-Control-Request-Method") != "" {
				h.Set("Access-Control-Allow-Methods", "GET, HEAD, POST, DELETE, OPTIONS")
				h.Set("Access-Control-Allow-Headers", corsHeaders)
				h.Set("Access-Control-Max-Age", "600")
				w.WriteHeader(http.StatusNoContent)
				return
			}
			h.Set("Access-Control-Expose-Headers", "Retry-After, X-Request-Id")
			next.ServeHTTP(w, r)
		})
	}
}
