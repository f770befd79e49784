package ollamatest

import (
	"cmp"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"slices"
	"time"
)

// entry is an installed model with everything a handler needs precomputed.
type entry struct {
	Model
	name       modelName
	short      string // tiny:latest
	full       string // registry.ollama.ai/library/tiny:latest
	caps       map[Capability]bool
	modifiedAt time.Time
}

func newEntry(m Model, now time.Time) *entry {
	n := parseName(m.Name)
	if len(m.Capabilities) == 0 {
		m.Capabilities = []Capability{CapCompletion}
	}
	m.Family = cmp.Or(m.Family, "llama")
	m.ParameterSize = cmp.Or(m.ParameterSize, "136K")
	m.QuantizationLevel = cmp.Or(m.QuantizationLevel, "F16")
	if m.Size == 0 {
		m.Size = 288000
	}
	m.ContextLength = cmp.Or(m.ContextLength, 4096)
	m.EmbeddingLength = cmp.Or(m.EmbeddingLength, 64)
	if m.Digest == "" {
		sum := sha256.Sum256([]byte(n.key()))
		m.Digest = hex.EncodeToString(sum[:])
	}
	e := &entry{Model: m, name: n, short: n.short(), full: n.String(), caps: map[Capability]bool{}, modifiedAt: now}
	e.Name = e.short
	for _, c := range m.Capabilities {
		e.caps[c] = true
	}
	return e
}

// catalog is an immutable snapshot of the installed models; handlers read it
// through Server.catalog without locking, writers replace it under Server.mu.
type catalog struct {
	byKey map[string]*entry
	tags  []byte // pre-encoded /api/tags body
}

type modelDetails struct {
	ParentModel       string   `json:"parent_model"`
	Format            string   `json:"format"`
	Family            string   `json:"family"`
	Families          []string `json:"families"`
	ParameterSize     string   `json:"parameter_size"`
	QuantizationLevel string   `json:"quantization_level"`
}

func (e *entry) details() modelDetails {
	return modelDetails{Format: "gguf", Family: e.Family, Families: []string{e.Family},
		ParameterSize: e.ParameterSize, QuantizationLevel: e.QuantizationLevel}
}

type listModel struct {
	Name       string       `json:"name"`
	Model      string       `json:"model"`
	ModifiedAt time.Time    `json:"modified_at"`
	Size       int64        `json:"size"`
	Digest     string       `json:"digest"`
	Details    modelDetails `json:"details"`
}

func newCatalog(byKey map[string]*entry) *catalog {
	list := make([]listModel, 0, len(byKey))
	for _, e := range byKey {
		list = append(list, listModel{Name: e.short, Model: e.short, ModifiedAt: e.modifiedAt,
			Size: e.Size, Digest: e.Digest, Details: e.details()})
	}
	slices.SortStableFunc(list, func(a, b listModel) int {
		if c := b.ModifiedAt.Compare(a.ModifiedAt); c != 0 {
			return c // most recently modified first, as Ollama sorts
		}
		return cmp.Compare(a.Name, b.Name)
	})
	body, _ := json.Marshal(struct {
		Models []listModel `json:"models"`
	}{list})
	return &catalog{byKey: byKey, tags: body}
}

// lookup finds an installed model by the name a client sent.
func (s *Server) lookup(name string) *entry {
	return s.catalog.Load().byKey[nameKey(name)]
}

// AddModel installs (or replaces) a model.
func (s *Server) AddModel(m Model) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.addLocked(newEntry(m, time.Now()))
}

func (s *Server) addLocked(e *entry) {
	old := s.catalog.Load().byKey
	next := make(map[string]*entry, len(old)+1)
	for k, v := range old {
		next[k] = v
	}
	next[e.name.key()] = e
	s.catalog.Store(newCatalog(next))
}

// RemoveModel uninstalls a model (and unloads it); it reports whether it existed.
func (s *Server) RemoveModel(name string) bool {
	key := nameKey(name)
	s.mu.Lock()
	old := s.catalog.Load().byKey
	_, ok := old[key]
	if ok {
		next := make(map[string]*entry, len(old))
		for k, v := range old {
			if k != key {
				next[k] = v
			}
		}
		s.catalog.Store(newCatalog(next))
		delete(s.loaded, key)
	}
	s.mu.Unlock()
	return ok
}

// Models lists the installed models' short names (tiny:latest), sorted.
func (s *Server) Models() []string {
	var out []string
	for _, e := range s.catalog.Load().byKey {
		out = append(out, e.short)
	}
	slices.Sort(out)
	return out
}

// copyModel installs dst as a copy of src (same digest), as /api/copy does.
func (s *Server) copyModel(src, dst string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	e, ok := s.catalog.Load().byKey[nameKey(src)]
	if !ok {
		return false
	}
	m := e.Model
	m.Name = dst
	s.addLocked(newEntry(m, time.Now()))
	return true
}
