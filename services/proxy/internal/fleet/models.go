package fleet

import (
	"encoding/json"
	"strings"
	"time"
)

// Model is one entry of a backend's /api/tags or /api/ps. Raw keeps the
// entry exactly as the backend sent it, so merged lists pass every field
// through.
type Model struct {
	Name      string
	ExpiresAt time.Time // /api/ps only
	Raw       json.RawMessage
}

// ModelList is what one backend reported, by normalised name.
type ModelList struct {
	Models []Model
	byName map[string]int
}

func newModelList(models []Model) *ModelList {
	l := &ModelList{Models: models, byName: make(map[string]int, len(models))}
	for i, m := range models {
		l.byName[Normalize(m.Name)] = i
	}
	return l
}

// Has reports whether name (normalised) is in the list.
func (l *ModelList) Has(name string) bool {
	if l == nil {
		return false
	}
	_, ok := l.byName[Normalize(name)]
	return ok
}

// Get returns the entry for name.
func (l *ModelList) Get(name string) (Model, bool) {
	if l == nil {
		return Model{}, false
	}
	i, ok := l.byName[Normalize(name)]
	if !ok {
		return Model{}, false
	}
	return l.Models[i], true
}

// Normalize applies Ollama's default tag: "llama3" is "llama3:latest". A
// colon that belongs to a registry host's port ("host:5000/m") is not a tag.
func Normalize(name string) string {
	name = strings.TrimSpace(name)
	if name == "" {
		return name
	}
	slash := strings.LastIndexByte(name, '/')
	if !strings.Contains(name[slash+1:], ":") {
		return name + ":latest"
	}
	return name
}

// decodeModels reads {"models":[...]} keeping each entry raw.
func decodeModels(body []byte) ([]Model, error) {
	var doc struct {
		Models []json.RawMessage `json:"models"`
	}
	if err := json.Unmarshal(body, &doc); err != nil {
		return nil, err
	}
	out := make([]Model, 0, len(doc.Models))
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
		out = append(out, Model{Name: m.Name, ExpiresAt: m.ExpiresAt, Raw: raw})
	}
	return out, nil
}

// decodeOpenAIModels reads {"data":[{"id":...}]} from /v1/models; llama.cpp's
// router mode adds a status per model, which marks it loaded.
func decodeOpenAIModels(body []byte) (all, loaded []Model, err error) {
	var doc struct {
		Data []json.RawMessage `json:"data"`
	}
	if err := json.Unmarshal(body, &doc); err != nil {
		return nil, nil, err
	}
	for _, raw := range doc.Data {
		var m struct {
			ID     string `json:"id"`
			Status *struct {
				Value string `json:"value"`
			} `json:"status"`
		}
		if err := json.Unmarshal(raw, &m); err != nil {
			return nil, nil, err
		}
		entry := Model{Name: m.ID, Raw: raw}
		all = append(all, entry)
		if m.Status == nil || m.Status.Value == "loaded" {
			loaded = append(loaded, entry)
		}
	}
	return all, loaded, nil
}

// ParseModelList decodes a /api/tags or /api/ps body.
func ParseModelList(body []byte) (*ModelList, error) {
	models, err := decodeModels(body)
	if err != nil {
		return nil, err
	}
	return newModelList(models), nil
}
