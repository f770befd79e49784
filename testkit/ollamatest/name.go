package ollamatest

import "strings"

const (
	defaultHost      = "registry.ollama.ai"
	defaultNamespace = "library"
	defaultTag       = "latest"
)

// modelName is a parsed model reference, filled in with Ollama's defaults
// (registry.ollama.ai/library/NAME:latest), mirroring types/model.ParseName.
type modelName struct {
	host, namespace, model, tag string
}

func parseName(s string) modelName {
	var n modelName
	if strings.LastIndex(s, ":") > strings.LastIndex(s, "/") {
		i := strings.LastIndex(s, ":")
		s, n.tag = s[:i], s[i+1:]
	}
	if i := strings.LastIndex(s, "/"); i >= 0 {
		s, n.model = s[:i], s[i+1:]
		if j := strings.LastIndex(s, "/"); j >= 0 {
			n.host, n.namespace = s[:j], s[j+1:]
			if _, host, ok := strings.Cut(n.host, "://"); ok {
				n.host = host
			}
		} else {
			n.namespace = s
		}
	} else {
		n.model = s
	}
	if n.host == "" {
		n.host = defaultHost
	}
	if n.namespace == "" {
		n.namespace = defaultNamespace
	}
	if n.tag == "" {
		n.tag = defaultTag
	}
	return n
}

func (n modelName) valid() bool {
	return n.model != "" && n.tag != "" && n.namespace != "" && n.host != "" &&
		!strings.ContainsAny(n.model, " \t\n/:") && !strings.ContainsAny(n.tag, " \t\n/:")
}

// String is the fully qualified name, e.g. registry.ollama.ai/library/tiny:latest.
func (n modelName) String() string {
	return n.host + "/" + n.namespace + "/" + n.model + ":" + n.tag
}

// key is the case-insensitive lookup key; Ollama matches names with EqualFold.
func (n modelName) key() string { return strings.ToLower(n.String()) }

// short is Ollama's DisplayShortest, e.g. tiny:latest or ns/model:tag.
func (n modelName) short() string {
	switch {
	case !strings.EqualFold(n.host, defaultHost):
		return n.host + "/" + n.namespace + "/" + n.model + ":" + n.tag
	case !strings.EqualFold(n.namespace, defaultNamespace):
		return n.namespace + "/" + n.model + ":" + n.tag
	}
	return n.model + ":" + n.tag
}

// nameKey returns the lookup key for a user-supplied model reference.
func nameKey(s string) string { return parseName(s).key() }
