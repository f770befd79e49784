// Package ollamaapi serves Ollama's own HTTP API over the whole fleet:
// inference routes go to one backend through the router, model management
// fans out to every Ollama backend, and listings are merged.
package ollamaapi

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"

	"github.com/go-chi/chi/v5"

	"github.com/droverhq/drover/services/proxy/internal/forward"
)

// WriteError writes Ollama's error shape, {"error": msg}.
func WriteError(w http.ResponseWriter, status int, msg string) {
	writeError(w, status, "application/json; charset=utf-8", msg)
}

func writeError(w http.ResponseWriter, status int, contentType, msg string) {
	w.Header().Set("Content-Type", contentType)
	w.WriteHeader(status)
	b, _ := json.Marshal(map[string]string{"error": msg})
	w.Write(b) //nolint:errcheck // the client may be gone
}

// NotFound and MethodNotAllowed answer unknown paths, and known paths with
// the wrong method, as Ollama's router (gin) does: plain text without a
// trailing newline.
func NotFound(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "text/plain")
	w.WriteHeader(http.StatusNotFound)
	io.WriteString(w, "404 page not found") //nolint:errcheck // the client may be gone
}

// MethodNotAllowed: see NotFound. Like gin, it lists in Allow the methods
// the path has, asking the router that matched the path (chi tells its
// handler only that the method did not match).
func MethodNotAllowed(w http.ResponseWriter, r *http.Request) {
	if rctx := chi.RouteContext(r.Context()); rctx != nil && rctx.Routes != nil {
		if allow := allowed(rctx.Routes, r.URL.Path); allow != "" {
			w.Header().Set("Allow", allow)
		}
	}
	w.Header().Set("Content-Type", "text/plain")
	w.WriteHeader(http.StatusMethodNotAllowed)
	io.WriteString(w, "405 method not allowed") //nolint:errcheck // the client may be gone
}

// methodOrder is the order gin lists methods in Allow: the order Ollama's
// route table first registers each (HEAD "/", GET "/", POST, DELETE), then
// methods Ollama does not use.
var methodOrder = []string{http.MethodHead, http.MethodGet, http.MethodPost, http.MethodDelete,
	http.MethodPut, http.MethodPatch, http.MethodOptions}

// allowed lists the methods routes serves path with, comma-separated.
func allowed(routes chi.Routes, path string) string {
	var out []string
	for _, m := range methodOrder {
		if routes.Match(chi.NewRouteContext(), m, path) {
			out = append(out, m)
		}
	}
	return strings.Join(out, ", ")
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v) //nolint:errcheck // the client may be gone
}

// readBody reads the request body, answering errors in this API's format.
func readBody(w http.ResponseWriter, r *http.Request) ([]byte, bool) {
	return forward.ReadBody(w, r, WriteError)
}

// request reads a request's body and head. A request that names no model
// is answered by any backend, since Ollama words that differently per route;
// ok is false once the request has been answered.
func (h *Handler) request(w http.ResponseWriter, r *http.Request, route, kind string) ([]byte, head, bool) {
	body, ok := readBody(w, r)
	if !ok {
		return nil, head{}, false
	}
	hd, ok := parseHead(w, body, kind)
	if !ok {
		return nil, head{}, false
	}
	if hd.Model == "" {
		h.passAny(w, r, route, body)
		return nil, head{}, false
	}
	return body, hd, true
}

// head is the part of a request Drover reads; every other field goes to the
// backend untouched.
type head struct {
	Model  string `json:"model"`
	Name   string `json:"name"` // older clients' spelling on show/pull/push/delete
	Stream *bool  `json:"stream"`
}

// parseHead decodes model and stream as Ollama does: an empty body is
// "missing request body", malformed JSON is reported with encoding/json's
// own words, both 400. A missing model is the caller's to handle (Ollama
// words it differently per route). A mistyped
// field Drover does not need is left for the backend to reject in its words;
// kind names Ollama's request struct ("ChatRequest") for the one it words.
func parseHead(w http.ResponseWriter, body []byte, kind string) (head, bool) {
	var h head
	if len(bytes.TrimSpace(body)) == 0 {
		WriteError(w, http.StatusBadRequest, "missing request body")
		return h, false
	}
	// Unmarshal is the cheap path for a well-formed body; anything else goes
	// through a Decoder, as Ollama's router reads bodies, for its semantics
	// (trailing data ignored) and its error wording.
	if json.Unmarshal(body, &h) == nil {
		return h.withName(), true
	}
	h = head{}
	if err := json.NewDecoder(bytes.NewReader(body)).Decode(&h); err != nil {
		var typeErr *json.UnmarshalTypeError
		switch {
		case errors.As(err, &typeErr) && typeErr.Field == "stream":
			h.Stream = nil
		case errors.As(err, &typeErr):
			WriteError(w, http.StatusBadRequest, fmt.Sprintf("json: cannot unmarshal %s into Go struct field %s.%s of type %s", typeErr.Value, kind, typeErr.Field, typeErr.Type))
			return h, false
		default:
			WriteError(w, http.StatusBadRequest, err.Error())
			return h, false
		}
	}
	return h.withName(), true
}

// withName takes the older "name" field when "model" is absent.
func (h head) withName() head {
	if h.Model == "" {
		h.Model = h.Name
	}
	return h
}

// streaming applies Ollama's default: stream unless told not to.
func (h head) streaming() bool { return h.Stream == nil || *h.Stream }
