// Package workload describes the requests drover-bench sends, as data: a
// method, a path, a body and a validator that decides whether a complete
// response body counts as a success. Adding a workload is adding a table entry.
package workload

import (
	"fmt"
	"sort"
	"strings"
)

// Workload is one kind of request. Body is shared by every request and must
// never be modified.
type Workload struct {
	Name   string
	Method string
	Path   string
	Body   []byte
	// Validate inspects a whole response body (status 200 already checked)
	// and returns an error when the response must not count as ok.
	Validate func(body []byte) error
}

var table = []Workload{
	{
		Name:     "chat",
		Method:   "POST",
		Path:     "/api/chat",
		Body:     []byte(`{"model":"tiny","messages":[{"role":"user","content":"hello there"}],"stream":false}`),
		Validate: ollamaFinal,
	},
	{
		Name:     "chat-stream",
		Method:   "POST",
		Path:     "/api/chat",
		Body:     []byte(`{"model":"tiny","messages":[{"role":"user","content":"hello there"}],"stream":true}`),
		Validate: ollamaStream,
	},
	{
		Name:     "openai-chat",
		Method:   "POST",
		Path:     "/v1/chat/completions",
		Body:     []byte(`{"model":"tiny","messages":[{"role":"user","content":"hello there"}],"stream":false}`),
		Validate: openAIFinal,
	},
	{
		Name:     "openai-stream",
		Method:   "POST",
		Path:     "/v1/chat/completions",
		Body:     []byte(`{"model":"tiny","messages":[{"role":"user","content":"hello there"}],"stream":true}`),
		Validate: openAIStream,
	},
}

// Default names the workloads run when none are chosen: the Ollama-native ones.
const Default = "chat,chat-stream"

// Names lists every known workload name in table order.
func Names() []string {
	names := make([]string, len(table))
	for i, w := range table {
		names[i] = w.Name
	}
	return names
}

// Select parses a comma-separated list of workload names ("all" for every
// one) and returns them in the order given.
func Select(list string) ([]Workload, error) {
	if strings.TrimSpace(list) == "all" {
		return append([]Workload(nil), table...), nil
	}
	var out []Workload
	seen := map[string]bool{}
	for _, name := range strings.Split(list, ",") {
		name = strings.TrimSpace(name)
		if name == "" || seen[name] {
			continue
		}
		w, ok := lookup(name)
		if !ok {
			known := Names()
			sort.Strings(known)
			return nil, fmt.Errorf("unknown workload %q (known: %s, all)", name, strings.Join(known, ", "))
		}
		seen[name] = true
		out = append(out, w)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("no workloads selected")
	}
	return out, nil
}

func lookup(name string) (Workload, bool) {
	for _, w := range table {
		if w.Name == name {
			return w, true
		}
	}
	return Workload{}, false
}
