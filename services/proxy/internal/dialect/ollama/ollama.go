// Package ollama is the dialect of Ollama servers: they list their models at
// /api/tags and the loaded ones at /api/ps, answer every route of Ollama's
// API as it is, serve the OpenAI API's /v1 routes (but rerank) in
// OpenAI's own terms, and Anthropic's /v1/messages in Anthropic's
// (anthropic.go).
package ollama

import (
	"encoding/json"
	"strings"
	"time"

	"github.com/droverhq/drover/services/proxy/internal/catalog"
	"github.com/droverhq/drover/services/proxy/internal/dialect"
	"github.com/droverhq/drover/services/proxy/internal/dialect/openai"
)

// Dialect is Ollama's. Its zero value is ready.
type Dialect struct{}

var _ dialect.Dialect = Dialect{}

// Kind is "ollama".
func (Dialect) Kind() string { return "ollama" }

// serves lists the client routes Ollama answers.
var serves = map[string]bool{
	"/api/version":              true,
	"/api/tags":                 true,
	"/api/ps":                   true,
	"/api/show":                 true,
	"/api/chat":                 true,
	"/api/generate":             true,
	"/api/embed":                true,
	"/api/embeddings":           true,
	"/api/pull":                 true,
	"/api/push":                 true,
	"/api/create":               true,
	"/api/copy":                 true,
	"/api/delete":               true,
	"/api/blobs":                true,
	"/api/status":               true,
	"/api/experimental/aliases": true,
	"/v1/chat/completions":      true,
	"/v1/completions":           true,
	"/v1/embeddings":            true,
	"/v1/models":                true,
	"/v1/responses":             true,
	"/v1/images/generations":    true,
	"/v1/images/edits":          true,
	MessagesRoute:               true,
	dialect.Load:                true,
	dialect.Relay:               true,
}

// Serves reports a route in the table above.
func (Dialect) Serves(route string) bool { return serves[route] }

// Models reads /api/tags.
func (Dialect) Models() dialect.Listing { return dialect.Listing{Path: "/api/tags", Decode: decode} }

// Loaded reads /api/ps.
func (Dialect) Loaded() dialect.Listing { return dialect.Listing{Path: "/api/ps", Decode: decode} }

// ProbePath is /api/version, Ollama's cheapest route.
func (Dialect) ProbePath() string { return "/api/version" }

// decode reads {"models":[...]} keeping each entry raw.
func decode(body []byte) ([]catalog.Model, error) {
	var doc struct {
		Models []json.RawMessage `json:"models"`
	}
	if err := json.Unmarshal(body, &doc); err != nil {
		return nil, err
	}
	out := make([]catalog.Model, 0, len(doc.Models))
	for _, raw := range doc.Models {
		var m struct {
			Name      string    `json:"name"`
			Model     string    `json:"model"`
			ExpiresAt time.Time `json:"expires_at"`
		}
		if err := json.Unmarshal(raw, &m); err != nil {
			return nil, err
		}
		if m.Name == "" {
			m.Name = m.Model
		}
		out = append(out, catalog.Model{Name: m.Name, ExpiresAt: m.ExpiresAt, Raw: raw})
	}
	return out, nil
}

// OllamaEntry is the entry as the server sent it.
func (Dialect) OllamaEntry(m catalog.Model) json.RawMessage { return m.Raw }

// OpenAIEntry shapes the entry the way Ollama's own /v1/models does.
func (Dialect) OpenAIEntry(m catalog.Model) json.RawMessage {
	var meta struct {
		ModifiedAt time.Time `json:"modified_at"`
	}
	json.Unmarshal(m.Raw, &meta) //nolint:errcheck // created is informative
	out, _ := json.Marshal(struct {
		ID      string `json:"id"`
		Object  string `json:"object"`
		Created int64  `json:"created"`
		OwnedBy string `json:"owned_by"`
	}{m.Name, "model", meta.ModifiedAt.Unix(), namespace(m.Name)})
	return out
}

// namespace is the owner Ollama's /v1/models reports: the name's namespace,
// "library" for official models.
func namespace(name string) string {
	parts := strings.Split(name, "/")
	if len(parts) >= 2 {
		return parts[len(parts)-2]
	}
	return "library"
}

// Exchange sends every request as the client sent it, renaming the model
// for an alias; the /v1 routes are OpenAI's (openai.V1) but Anthropic's
// /v1/messages (anthropic.go).
func (Dialect) Exchange(c dialect.Call) (dialect.Exchange, error) {
	if c.Route == MessagesRoute {
		return messages(c)
	}
	if strings.HasPrefix(c.Route, "/v1/") {
		return openai.V1(c)
	}
	x, err := dialect.Pass(c)
	x.Tokens = tokens[c.Route]
	if x.Tokens != nil {
		x.Complete = generationDone
	}
	return x, err
}
