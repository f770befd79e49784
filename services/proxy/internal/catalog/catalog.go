// Package catalog holds what one backend offers: its models, found by
// their normalised names.
package catalog

import (
	"encoding/json"
	"strings"
	"time"
)

// Model is one entry of a backend's model list. Raw keeps the entry exactly
// as the backend sent it, so merged lists pass every field through.
type Model struct {
	Name      string
	ExpiresAt time.Time // loaded lists only; zero when the backend does not say
	Raw       json.RawMessage
}

// List is what one backend reported, by normalised name. It is not
// modified after NewList.
type List struct {
	Models []Model
	byName map[string]int
}

// NewList indexes models by normalised name.
func NewList(models []Model) *List {
	l := &List{Models: models, byName: make(map[string]int, len(models))}
	for i, m := range models {
		l.byName[Normalize(m.Name)] = i
	}
	// "tiny" finds "tiny:latest" without building the name per lookup;
	// a model listed untagged and tagged stays found by its own names.
	for i, m := range models {
		if base, ok := strings.CutSuffix(Normalize(m.Name), ":latest"); ok && !strings.Contains(base[strings.LastIndexByte(base, '/')+1:], ":") {
			if _, taken := l.byName[base]; !taken {
				l.byName[base] = i
			}
		}
	}
	return l
}

// Has reports whether name (normalised) is in the list. A nil list has
// nothing.
func (l *List) Has(name string) bool {
	_, ok := l.Get(name)
	return ok
}

// Get returns the entry for name.
func (l *List) Get(name string) (Model, bool) {
	if l == nil {
		return Model{}, false
	}
	i, ok := l.byName[name] // most names arrive normalised or are untagged
	if !ok {
		i, ok = l.byName[Normalize(name)]
	}
	if !ok {
		return Model{}, false
	}
	return l.Models[i], true
}

// Same reports whether a and b name the same model (Normalize(a) ==
// Normalize(b)) without building either name.
func Same(a, b string) bool {
	a, b = strings.TrimSpace(a), strings.TrimSpace(b)
	return a == b || latest(a, b) || latest(b, a)
}

// latest reports whether tagged is untagged with the default tag added.
func latest(untagged, tagged string) bool {
	const tag = ":latest"
	return untagged != "" && len(tagged) == len(untagged)+len(tag) && strings.HasPrefix(tagged, untagged) &&
		strings.HasSuffix(tagged, tag) && !strings.Contains(untagged[strings.LastIndexByte(untagged, '/')+1:], ":")
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
