// Package openai is the dialect of OpenAI-compatible servers (vLLM,
// llama.cpp's server, hosted APIs): they list their models at /v1/models,
// serve the OpenAI API's /v1 routes as they are, and serve Ollama's
// inference routes and Anthropic's Messages API through translation
// (package translate).
package openai

import (
	"encoding/json"
	"time"

	"github.com/droverhq/drover/services/proxy/internal/catalog"
	"github.com/droverhq/drover/services/proxy/internal/dialect"
)

// Dialect is the OpenAI-compatible dialect. Its zero value is ready.
type Dialect struct{}

var _ dialect.Dialect = Dialect{}

// Kind is "openai".
func (Dialect) Kind() string { return "openai" }

// serves lists the client routes an OpenAI-compatible server answers: its
// own, and Ollama's inference routes and model list and Anthropic's
// Messages API through translation.
var serves = map[string]bool{
	"/v1/chat/completions":   true,
	"/v1/completions":        true,
	"/v1/embeddings":         true,
	"/v1/rerank":             true,
	"/v1/models":             true,
	"/v1/responses":          true,
	"/v1/images/generations": true,
	"/v1/images/edits":       true,
	"/v1/messages":           true,
	"/api/chat":              true,
	"/api/generate":          true,
	"/api/embed":             true,
	"/api/embeddings":        true,
	"/api/tags":              true,
}

// Serves reports a route in the table above. Such servers load their own
// models (no Load) and do not speak Ollama's API (no Relay).
func (Dialect) Serves(route string) bool { return serves[route] }

// Models reads /v1/models; Loaded reads it too, keeping the models
// llama.cpp's router mode marks loaded (a server without that status has
// everything it lists loaded).
func (Dialect) Models() dialect.Listing {
	return dialect.Listing{Path: "/v1/models", Decode: func(body []byte) ([]catalog.Model, error) { return decode(body, false) }}
}

// Loaded: see Models.
func (Dialect) Loaded() dialect.Listing {
	return dialect.Listing{Path: "/v1/models", Decode: func(body []byte) ([]catalog.Model, error) { return decode(body, true) }}
}

// ProbePath is /v1/models: OpenAI-compatible servers share no cheaper
// route.
func (Dialect) ProbePath() string { return "/v1/models" }

// decode reads {"data":[{"id":...}]}, keeping each entry raw. An entry
// without an id is left out; a status that is not llama.cpp's object counts
// as loaded.
func decode(body []byte, loadedOnly bool) ([]catalog.Model, error) {
	var doc struct {
		Data []json.RawMessage `json:"data"`
	}
	if err := json.Unmarshal(body, &doc); err != nil {
		return nil, err
	}
	out := make([]catalog.Model, 0, len(doc.Data))
	for _, raw := range doc.Data {
		var m struct {
			ID string `json:"id"`
		}
		if json.Unmarshal(raw, &m) != nil || m.ID == "" {
			continue
		}
		if loadedOnly && !loaded(raw) {
			continue
		}
		out = append(out, catalog.Model{Name: m.ID, Raw: raw})
	}
	return out, nil
}

func loaded(raw json.RawMessage) bool {
	var m struct {
		Status *struct {
			Value string `json:"value"`
		} `json:"status"`
	}
	return json.Unmarshal(raw, &m) != nil || m.Status == nil || m.Status.Value == "loaded"
}

// OpenAIEntry is the entry as the server sent it (llama.cpp's status,
// vLLM's max_model_len and all).
func (Dialect) OpenAIEntry(m catalog.Model) json.RawMessage { return m.Raw }

// OllamaEntry shapes the entry as /api/tags lists a model, with the
// details the server does not report left empty.
func (Dialect) OllamaEntry(m catalog.Model) json.RawMessage {
	var src struct {
		Created int64 `json:"created"`
	}
	json.Unmarshal(m.Raw, &src) //nolint:errcheck // created is informative
	type details struct {
		ParentModel       string   `json:"parent_model"`
		Format            string   `json:"format"`
		Family            string   `json:"family"`
		Families          []string `json:"families"`
		ParameterSize     string   `json:"parameter_size"`
		QuantizationLevel string   `json:"quantization_level"`
	}
	tag := struct {
		Name       string  `json:"name"`
		Model      string  `json:"model"`
		ModifiedAt string  `json:"modified_at"`
		Size       int64   `json:"size"`
		Digest     string  `json:"digest"`
		Details    details `json:"details"`
	}{Name: m.Name, Model: m.Name, ModifiedAt: time.Unix(src.Created, 0).UTC().Format(time.RFC3339Nano)}
	out, _ := json.Marshal(tag)
	return out
}

// Exchange sends /v1 routes as they are (asking a stream for its usage)
// and translates Ollama's routes and Anthropic's /v1/messages.
func (Dialect) Exchange(c dialect.Call) (dialect.Exchange, error) {
	if t, ok := translators[c.Route]; ok {
		return translated(t, c)
	}
	if c.Route == "/v1/messages" {
		return messages(c)
	}
	return V1(c)
}
