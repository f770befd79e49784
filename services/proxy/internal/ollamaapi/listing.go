package ollamaapi

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/sourcegraph/conc/iter"

	"github.com/droverhq/drover/services/proxy/internal/backend"
	"github.com/droverhq/drover/services/proxy/internal/fleet"
)

// listTimeout bounds a live fan-out read; a slow backend is left out rather
// than holding up the whole list.
const listTimeout = 5 * time.Second

type backendResult struct {
	b    *backend.Backend
	body []byte
	err  error
}

// fanGet reads path from every usable backend of the given types at once.
func (h *Handler) fanGet(ctx context.Context, path string, kinds []backend.Type) []backendResult {
	var bs []*backend.Backend
	for _, b := range h.Fleet.Backends {
		if typeIn(b.Type, kinds) && b.Health.State() != backend.Open {
			bs = append(bs, b)
		}
	}
	ctx, cancel := context.WithTimeout(ctx, listTimeout)
	defer cancel()
	return iter.Map(bs, func(b **backend.Backend) backendResult {
		body, err := h.Fleet.Get(ctx, *b, path)
		return backendResult{b: *b, body: body, err: err}
	})
}

func typeIn(t backend.Type, kinds []backend.Type) bool {
	for _, k := range kinds {
		if k == t {
			return true
		}
	}
	return false
}

// version answers the lowest version across the fleet, so a client never
// uses a feature some backend lacks.
func (h *Handler) version(w http.ResponseWriter, r *http.Request) {
	lowest := ""
	for _, res := range h.fanGet(r.Context(), "/api/version", ollamaOnly) {
		if res.err != nil {
			continue
		}
		var v struct {
			Version string `json:"version"`
		}
		if json.Unmarshal(res.body, &v) != nil || v.Version == "" {
			continue
		}
		if lowest == "" || compareVersions(v.Version, lowest) < 0 {
			lowest = v.Version
		}
	}
	if lowest == "" {
		WriteError(w, http.StatusServiceUnavailable, "no backend is reachable")
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"version": lowest})
}

// compareVersions orders dotted versions numerically ("0.9.1" < "0.17.4");
// a pre-release suffix sorts before its release.
func compareVersions(a, b string) int {
	pa, sa, _ := strings.Cut(strings.TrimPrefix(a, "v"), "-")
	pb, sb, _ := strings.Cut(strings.TrimPrefix(b, "v"), "-")
	as, bs := strings.Split(pa, "."), strings.Split(pb, ".")
	for i := 0; i < max(len(as), len(bs)); i++ {
		var x, y int
		if i < len(as) {
			x, _ = strconv.Atoi(as[i])
		}
		if i < len(bs) {
			y, _ = strconv.Atoi(bs[i])
		}
		if x != y {
			return x - y
		}
	}
	switch {
	case sa == sb:
		return 0
	case sa == "":
		return 1
	case sb == "":
		return -1
	}
	return strings.Compare(sa, sb)
}

// mergedModel is one model across the fleet: the first backend's entry
// (the longest-loaded one for /api/ps), plus where it lives.
type mergedModel struct {
	raw       json.RawMessage
	endpoints []string
	expires   time.Time
	modified  string
}

// merge de-duplicates models by normalised name and adds an "endpoints"
// field to each entry, keeping the backend's own fields and their order.
func merge(lists map[*backend.Backend]*fleet.ModelList, order []*backend.Backend) []json.RawMessage {
	byName := map[string]*mergedModel{}
	var names []string
	for _, b := range order {
		for _, m := range lists[b].Models {
			key := fleet.Normalize(m.Name)
			mm := byName[key]
			if mm == nil {
				mm = &mergedModel{}
				byName[key] = mm
				names = append(names, key)
			}
			mm.endpoints = append(mm.endpoints, b.Name)
			if mm.raw == nil || m.ExpiresAt.After(mm.expires) {
				var meta struct {
					ModifiedAt string `json:"modified_at"`
				}
				json.Unmarshal(m.Raw, &meta) //nolint:errcheck // sorting only
				mm.raw, mm.expires, mm.modified = m.Raw, m.ExpiresAt, meta.ModifiedAt
			}
		}
	}
	// Ollama lists newest first; keep that, then by name for stability.
	sort.SliceStable(names, func(i, j int) bool {
		a, b := byName[names[i]], byName[names[j]]
		if a.modified != b.modified {
			return a.modified > b.modified
		}
		return names[i] < names[j]
	})
	out := make([]json.RawMessage, 0, len(names))
	for _, n := range names {
		mm := byName[n]
		out = append(out, withField(mm.raw, "endpoints", mm.endpoints))
	}
	return out
}

// withField appends "key": v to a JSON object without disturbing the rest.
func withField(obj json.RawMessage, key string, v any) json.RawMessage {
	obj = bytes.TrimSpace(obj)
	val, _ := json.Marshal(v)
	if len(obj) < 2 || obj[len(obj)-1] != '}' {
		return obj
	}
	out := make([]byte, 0, len(obj)+len(key)+len(val)+4)
	out = append(out, obj[:len(obj)-1]...)
	if len(bytes.TrimSpace(obj[1:len(obj)-1])) > 0 {
		out = append(out, ',')
	}
	out = append(out, '"')
	out = append(out, key...)
	out = append(out, '"', ':')
	out = append(out, val...)
	return append(out, '}')
}

// tags merges every backend's /api/tags, read live so that changes made
// directly on a backend show at once, and refreshes the model cache with it.
// OpenAI-type backends' models (from their /v1/models) are listed too, as
// they serve /api/chat and friends through translation, and so are the
// configured aliases some backend can serve.
func (h *Handler) tags(w http.ResponseWriter, r *http.Request) {
	lists, order, ok := h.liveLists(r.Context(), "/api/tags", h.Fleet.StoreModels)
	for _, res := range h.fanGet(r.Context(), "/v1/models", []backend.Type{backend.TypeOpenAI}) {
		if res.err != nil {
			continue
		}
		l, err := openAITags(res.body)
		if err != nil {
			h.Log.Warn("bad model list", "backend", res.b.Name, "path", "/v1/models", "err", err)
			continue
		}
		lists[res.b] = l
		order = append(order, res.b)
		ok = true
	}
	if !ok {
		WriteError(w, http.StatusServiceUnavailable, "no backend is reachable")
		return
	}
	models := merge(lists, order)
	writeJSON(w, http.StatusOK, map[string]any{"models": append(models, h.aliasTags(lists, models)...)})
}

// openAITags shapes a /v1/models answer as /api/tags entries.
func openAITags(body []byte) (*fleet.ModelList, error) {
	var doc struct {
		Data []struct {
			ID      string `json:"id"`
			Created int64  `json:"created"`
		} `json:"data"`
	}
	if err := json.Unmarshal(body, &doc); err != nil {
		return nil, err
	}
	type details struct {
		ParentModel       string   `json:"parent_model"`
		Format            string   `json:"format"`
		Family            string   `json:"family"`
		Families          []string `json:"families"`
		ParameterSize     string   `json:"parameter_size"`
		QuantizationLevel string   `json:"quantization_level"`
	}
	type tag struct {
		Name       string  `json:"name"`
		Model      string  `json:"model"`
		ModifiedAt string  `json:"modified_at"`
		Size       int64   `json:"size"`
		Digest     string  `json:"digest"`
		Details    details `json:"details"`
	}
	tags := make([]tag, 0, len(doc.Data))
	for _, m := range doc.Data {
		tags = append(tags, tag{Name: m.ID, Model: m.ID, ModifiedAt: time.Unix(m.Created, 0).UTC().Format(time.RFC3339Nano)})
	}
	b, err := json.Marshal(map[string]any{"models": tags})
	if err != nil {
		return nil, err
	}
	return fleet.ParseModelList(b)
}

// aliasTags lists each configured alias some listed backend can serve, as
// its first available target's entry under the public name, with the
// backends that serve it. Names already listed are left alone.
func (h *Handler) aliasTags(lists map[*backend.Backend]*fleet.ModelList, listed []json.RawMessage) []json.RawMessage {
	taken := map[string]bool{}
	for _, raw := range listed {
		var m struct {
			Name string `json:"name"`
		}
		json.Unmarshal(raw, &m) //nolint:errcheck // our own output
		taken[fleet.Normalize(m.Name)] = true
	}
	byName := map[string]*fleet.ModelList{}
	for b, l := range lists {
		byName[b.Name] = l
	}
	names := make([]string, 0, len(h.Fleet.Aliases()))
	for public := range h.Fleet.Aliases() {
		names = append(names, public)
	}
	sort.Strings(names)
	var out []json.RawMessage
	for _, public := range names {
		if taken[fleet.Normalize(public)] {
			continue
		}
		var entry json.RawMessage
		var endpoints []string
		for _, t := range h.Fleet.Aliases()[public] {
			m, ok := byName[t.Backend].Get(t.Model)
			if !ok {
				continue
			}
			if entry == nil {
				entry = renamed(m.Raw, public)
			}
			endpoints = append(endpoints, t.Backend)
		}
		if entry != nil {
			out = append(out, withField(entry, "endpoints", endpoints))
		}
	}
	return out
}

// renamed is a model entry with its name and model fields set to name.
func renamed(raw json.RawMessage, name string) json.RawMessage {
	var doc map[string]json.RawMessage
	if json.Unmarshal(raw, &doc) != nil {
		return nil
	}
	n, _ := json.Marshal(name)
	doc["name"], doc["model"] = n, n
	b, _ := json.Marshal(doc)
	return b
}

// ps merges every backend's /api/ps.
func (h *Handler) ps(w http.ResponseWriter, r *http.Request) {
	h.list(w, r, "/api/ps", h.Fleet.StoreLoaded)
}

func (h *Handler) list(w http.ResponseWriter, r *http.Request, path string, store func(*backend.Backend, *fleet.ModelList)) {
	lists, order, ok := h.liveLists(r.Context(), path, store)
	if !ok {
		WriteError(w, http.StatusServiceUnavailable, "no backend is reachable")
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"models": merge(lists, order)})
}

func (h *Handler) liveLists(ctx context.Context, path string, store func(*backend.Backend, *fleet.ModelList)) (map[*backend.Backend]*fleet.ModelList, []*backend.Backend, bool) {
	lists := map[*backend.Backend]*fleet.ModelList{}
	var order []*backend.Backend
	any := false
	for _, res := range h.fanGet(ctx, path, ollamaOnly) {
		if res.err != nil {
			continue
		}
		l, err := fleet.ParseModelList(res.body)
		if err != nil {
			h.Log.Warn("bad model list", "backend", res.b.Name, "path", path, "err", err)
			continue
		}
		store(res.b, l)
		lists[res.b] = l
		order = append(order, res.b)
		any = true
	}
	return lists, order, any || len(h.Fleet.Backends) == 0
}

// psDetails lists every loaded model on every backend, not de-duplicated:
// which endpoint runs which model, until when.
func (h *Handler) psDetails(w http.ResponseWriter, r *http.Request) {
	lists, order, _ := h.liveLists(r.Context(), "/api/ps", h.Fleet.StoreLoaded)
	out := []json.RawMessage{}
	for _, b := range order {
		for _, m := range lists[b].Models {
			out = append(out, withField(m.Raw, "endpoint", b.Name))
		}
	}
	writeJSON(w, http.StatusOK, map[string]any{"models": out})
}

// show answers from one backend that has the model.
func (h *Handler) show(w http.ResponseWriter, r *http.Request) {
	body, hd, ok := h.request(w, r, "/api/show", "ShowRequest")
	if !ok {
		return
	}
	cands, err := h.Fleet.Candidates(r.Context(), hd.Model, ollamaOnly, nil)
	if err != nil {
		if err == fleet.ErrModelNotFound {
			WriteError(w, http.StatusNotFound, fmt.Sprintf("model '%s' not found", hd.Model))
		} else {
			WriteError(w, http.StatusServiceUnavailable, err.Error())
		}
		return
	}
	for _, c := range cands {
		b, _ := h.Fleet.Backend(c.Backend)
		if h.pass(w, r, b, http.MethodPost, "/api/show", body) {
			return
		}
	}
	WriteError(w, http.StatusBadGateway, "no backend answered")
}

// passAny sends a request that names no model to any reachable Ollama
// backend, so its answer (Ollama's own error wording) reaches the client.
// Whatever status it answers is the answer: Ollama itself says 500 to some
// of these (an embed without a model), which says nothing of its health.
func (h *Handler) passAny(w http.ResponseWriter, r *http.Request, path string, body []byte) {
	for _, b := range h.Fleet.Backends {
		if b.Type == backend.TypeOllama && b.Health.State() != backend.Open && h.passThrough(w, r, b, r.Method, path, body, true) {
			return
		}
	}
	WriteError(w, http.StatusServiceUnavailable, "no backend is reachable")
}

// pass relays one backend's answer to the client. It returns false, having
// written nothing, when the backend could not be reached or failed with 5xx.
func (h *Handler) pass(w http.ResponseWriter, r *http.Request, b *backend.Backend, method, path string, body []byte) bool {
	return h.passThrough(w, r, b, method, path, body, false)
}

// passThrough is pass; with any5xx it relays a 5xx answer too, and does
// not count it against the backend.
func (h *Handler) passThrough(w http.ResponseWriter, r *http.Request, b *backend.Backend, method, path string, body []byte, any5xx bool) bool {
	req, err := b.NewRequest(r.Context(), method, path, bytes.NewReader(body))
	if err != nil {
		return false
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := b.Client.Do(req)
	if err != nil {
		if r.Context().Err() == nil {
			b.Health.Failure(err, fleet.IsConnectError(err))
		}
		return false
	}
	defer resp.Body.Close()
	if resp.StatusCode >= 500 && !any5xx {
		b.Health.Failure(fmt.Errorf("%s: status %d", path, resp.StatusCode), false)
		return false
	}
	for _, k := range []string{"Content-Type", "Content-Length"} {
		if v := resp.Header.Get(k); v != "" {
			w.Header().Set(k, v)
		}
	}
	w.WriteHeader(resp.StatusCode)
	io.Copy(w, resp.Body) //nolint:errcheck // the client may be gone
	return true
}
