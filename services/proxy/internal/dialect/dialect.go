// Package dialect is what differs between kinds of backend: where a backend
// lists its models and answers a probe, which client routes it can serve,
// how a request for one of them is prepared for it, and how its answer is
// turned back and counted. Each backend is given one Dialect when it is
// built (as an httputil.ReverseProxy is configured once with its hooks);
// everything else asks the dialect instead of comparing kinds.
//
// The dialects are in the packages below this one: ollama (Ollama's own
// API) and openai (OpenAI-compatible servers: vLLM, llama.cpp's server,
// hosted APIs). Each has a tokens.go saying where its token counts are read.
package dialect

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/droverhq/drover/services/proxy/internal/catalog"
	"github.com/droverhq/drover/services/proxy/internal/meter"
)

// Dialect is how Drover talks to one kind of backend. Implementations are
// stateless and safe for concurrent use.
type Dialect interface {
	// Kind is the backend type as configured ("ollama", "openai").
	Kind() string
	// Serves reports whether a backend of this kind can answer route: a
	// client route ("/api/chat", "/v1/rerank"; "/api/blobs" for the blob
	// routes) or one of the requests named below (Load, Relay).
	Serves(route string) bool
	// Models and Loaded say where the backend lists the models it has and
	// those it has loaded, and how to read the lists.
	Models() Listing
	Loaded() Listing
	// ProbePath is what a background probe GETs to see whether the backend
	// is back: any 200 means it is.
	ProbePath() string
	// Exchange prepares one attempt of c on a backend of this kind. An error
	// means the request cannot be put in this backend's terms (the client's
	// mistake: it is answered 400).
	Exchange(c Call) (Exchange, error)
	// OllamaEntry is m, read by this dialect's Models listing, as an entry
	// of Ollama's /api/tags; OpenAIEntry as an entry of OpenAI's /v1/models.
	OllamaEntry(m catalog.Model) json.RawMessage
	OpenAIEntry(m catalog.Model) json.RawMessage
}

// Requests a dialect is asked about besides client routes.
const (
	// Load is a request that only loads or unloads a model (Ollama's chat
	// without messages, generate without prompt, embed without input).
	Load = "load"
	// Relay is an Ollama API request passed on as it is, the backend's own
	// answer going to the client unchanged (a request naming no model,
	// which Ollama words differently per route).
	Relay = "relay"
)

// Listing is where a backend keeps a list of models and how to read it.
type Listing struct {
	Path   string
	Decode func(body []byte) ([]catalog.Model, error)
}

// Call is one client request as a dialect sees it on one attempt.
type Call struct {
	Route  string // client route: "/api/chat", "/v1/chat/completions", ...
	Body   []byte // as the client sent it; an Exchange must not modify it
	Model  string // as the client named it
	Target string // the backend's name for the model (an alias's target)
	Stream bool
	// IncludeUsage is set when an OpenAI API client asked for the stream's
	// usage chunk itself (stream_options.include_usage).
	IncludeUsage bool
	Start        time.Time // when the request arrived
}

// Renamed reports whether the backend knows the model by another name than
// the client used.
func (c Call) Renamed() bool { return !catalog.Same(c.Target, c.Model) }

// Exchange is one attempt of a call on one backend: what to send and how to
// read what comes back. Each attempt gets its own, so what a translation
// keeps (what was asked, in which words) belongs to that attempt alone.
type Exchange struct {
	Path string // backend path
	Body []byte // request body for the backend
	// Transform, if set, is called once the backend has answered (any
	// status it is not failed over for, and the last failure when every
	// attempt failed), before anything reaches the client. It may edit h,
	// the backend's response headers, which are then copied to the client,
	// and returns the filter the body goes through on its way to client, or
	// nil to pass it through untouched. The Meter sees the backend's bytes,
	// not the filter's. Close is called only when the backend's body ended
	// cleanly; a Write error means the client is gone. Content-Length is
	// dropped whenever a filter is used.
	Transform func(status int, h http.Header, client io.Writer) io.WriteCloser
	// Tokens, if set, reads the counts from the end of a finished 2xx
	// response as the backend sent it; nil results mean the backend did
	// not report them. Unset: never known.
	Tokens func(m *meter.Meter) (in, out *int64)
	// Complete, if set, reports whether the backend bytes seen so far are a
	// whole answer, so that a client hanging up right after it (as OpenAI's
	// SDKs do at data: [DONE]) is not recorded as an error.
	Complete func(m *meter.Meter) bool
}

// Pass is the exchange for a backend that takes c as the client sent it:
// the same path and body, with the body's "model" rewritten when the
// backend knows the model by another name.
func Pass(c Call) (Exchange, error) {
	if !c.Renamed() {
		return Exchange{Path: c.Route, Body: c.Body}, nil
	}
	body, err := SetModel(c.Body, c.Target)
	return Exchange{Path: c.Route, Body: body}, err
}

// SetModel rewrites the top-level "model" field of a JSON object body and
// leaves every other field as the client sent it.
func SetModel(body []byte, model string) ([]byte, error) {
	var doc map[string]json.RawMessage
	if err := json.Unmarshal(body, &doc); err != nil {
		return nil, fmt.Errorf("invalid JSON body: %w", err)
	}
	m, _ := json.Marshal(model)
	doc["model"] = m
	return json.Marshal(doc)
}
