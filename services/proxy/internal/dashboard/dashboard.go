// Package dashboard serves the operator's page at / for browsers: backends
// and their health, models and where each is loaded, live in-flight counts
// (from /api/usage-stream), tokens per minute and usage per client key
// (from the analytics routes), each key's limits with what is left and
// what it spent this UTC day and month (from /api/limits), and the model
// actions (pull, delete, copy,
// show) through the Ollama API Drover already serves.
//
// The page is plain HTML, CSS and JavaScript embedded in the binary: no
// build step, no CDN, it works offline. It holds no data and no secret
// itself, so it is served without a key; it asks for one when the API
// answers 401 and shows what that key may see: a client key its own usage
// (and which key it is), an admin every key's, with the admin-only panels.
// The key is kept for the browser tab only (sessionStorage) and sent as
// the Authorization header; the one exception is the EventSource of
// /api/usage-stream, which cannot send headers and carries ?api_key=. A
// link /?api_key=<key> hands a key over: the page keeps it and takes it
// out of the address bar and history (and sends no Referer, so it reaches
// nothing else before that).
//
// Content negotiation keeps Ollama's contract: only a request for / whose
// Accept names text/html (what browsers send) gets the page; Ollama
// clients, curl and load balancers still get "Ollama is running".
package dashboard

import (
	"embed"
	"io/fs"
	"mime"
	"net/http"
	"strings"
)

//go:embed assets
var assets embed.FS

// Prefix is where the page's assets are served.
const Prefix = "/dashboard/"

// Middleware serves the page for browsers at / and its assets under
// Prefix, and passes every other request to next.
func Middleware(next http.Handler) http.Handler {
	sub, err := fs.Sub(assets, "assets")
	if err != nil {
		panic(err) // the embedded tree is fixed at build time
	}
	files := http.StripPrefix(Prefix, http.FileServerFS(sub))
	page, err := fs.ReadFile(sub, "index.html")
	if err != nil {
		panic(err)
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		get := r.Method == http.MethodGet || r.Method == http.MethodHead
		switch {
		case get && r.URL.Path == "/":
			// Caches must keep the page and "Ollama is running" apart.
			w.Header().Add("Vary", "Accept")
			if !WantsHTML(r.Header.Get("Accept")) {
				next.ServeHTTP(w, r)
				return
			}
			w.Header().Set("Content-Type", "text/html; charset=utf-8")
			w.Header().Set("Cache-Control", "no-cache")
			w.Header().Set("Content-Security-Policy", "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; connect-src 'self'")
			w.Header().Set("Referrer-Policy", "no-referrer")
			w.WriteHeader(http.StatusOK)
			if r.Method == http.MethodGet {
				w.Write(page) //nolint:errcheck // the client may be gone
			}
		case get && strings.HasPrefix(r.URL.Path, Prefix) && r.URL.Path != Prefix:
			w.Header().Set("Cache-Control", "no-cache")
			w.Header().Set("Referrer-Policy", "no-referrer")
			files.ServeHTTP(w, r)
		default:
			next.ServeHTTP(w, r)
		}
	})
}

// WantsHTML reports whether an Accept header asks for text/html (with a
// non-zero quality). A missing header, */* alone, or application/json
// does not: that is what curl and Ollama's clients send.
func WantsHTML(accept string) bool {
	for _, part := range strings.Split(accept, ",") {
		mt, params, err := mime.ParseMediaType(strings.TrimSpace(part))
		if err != nil || mt != "text/html" {
			continue
		}
		if q, ok := params["q"]; ok && strings.Trim(q, "0.") == "" {
			continue // q=0: explicitly not wanted
		}
		return true
	}
	return false
}
