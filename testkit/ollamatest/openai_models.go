package ollamatest

import (
	"cmp"
	"fmt"
	"net/http"
	"slices"
	"strconv"

	"github.com/droverhq/drover/pkg/jsonw"
)

// handleListModels is /v1/models: /api/tags through openai.ToListCompletion
// (same order; "data" is null when nothing is installed).
func (s *Server) handleListModels(w http.ResponseWriter, r *http.Request, _ *openaiFault) {
	byKey := s.catalog.Load().byKey
	list := make([]*entry, 0, len(byKey))
	for _, e := range byKey {
		list = append(list, e)
	}
	slices.SortStableFunc(list, func(a, b *entry) int {
		if c := b.modifiedAt.Compare(a.modifiedAt); c != 0 {
			return c
		}
		return cmp.Compare(a.short, b.short)
	})
	b := append(make([]byte, 0, 64+80*len(list)), `{"object":"list","data":`...)
	if len(list) == 0 {
		b = append(b, "null"...)
	} else {
		b = append(b, '[')
		for i, e := range list {
			if i > 0 {
				b = append(b, ',')
			}
			b = appendOpenAIModel(b, e.short, e)
		}
		b = append(b, ']')
	}
	w.Header().Set("Content-Type", "application/json")
	writeRaw(w, http.StatusOK, append(b, '}', '\n'))
}

// handleRetrieveModel is /v1/models/{model}: /api/show through
// openai.ToModel, which echoes the name as asked.
func (s *Server) handleRetrieveModel(w http.ResponseWriter, r *http.Request, name string) {
	ew := openaiErrors(w)
	n := parseName(name)
	if !n.valid() {
		writeError(ew, http.StatusInternalServerError, "unqualified name: "+n.String())
		return
	}
	e := s.lookup(name)
	if e == nil {
		writeError(ew, http.StatusNotFound, fmt.Sprintf("model '%s' not found", name))
		return
	}
	w.Header().Set("Content-Type", "application/json")
	writeRaw(w, http.StatusOK, append(appendOpenAIModel(nil, name, e), '\n'))
}

func appendOpenAIModel(b []byte, id string, e *entry) []byte {
	b = append(b, `{"id":`...)
	b = jsonw.AppendString(b, id)
	b = append(b, `,"object":"model","created":`...)
	b = strconv.AppendInt(b, e.modifiedAt.Unix(), 10)
	b = append(b, `,"owned_by":`...)
	b = jsonw.AppendString(b, parseName(id).namespace)
	return append(b, '}')
}
