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

	"github.com/droverhq/drover/services/proxy/internal/auth"
	"github.com/droverhq/drover/services/proxy/internal/backend"
	"github.com/droverhq/drover/services/proxy/internal/catalog"
	"github.com/droverhq/drover/services/proxy/internal/dialect"
	"github.com/droverhq/drover/services/proxy/internal/fleet"
)

// listTimeout bounds a live fan-out read; a slow backend is left out rather
// than holding up the whole list.
const listTimeout = 5 * time.Second

// fan runs read on every reachable backend that serves route, all at
// once, and returns what each answered, in configuration order.
func fan[T any](ctx context.Context, f *fleet.Fleet, route string, read func(context.Context, *backend.Backend) (T, error)) []result[T] {
	ctx, cancel := context.WithTimeout(ctx, listTimeout)
	defer cancel()
	return iter.Map(f.Reachable(route), func(b **backend.Backend) result[T] {
		v, err := read(ctx, *b)
		return result[T]{b: *b, v: v, err: err}
	})
}

type result[T any] struct {
	b   *backend.Backend
	v   T
	err error
}

// version answers the lowest version across the fleet, so a client never
// uses a feature some backend lacks.
func (h *Handler) version(w http.ResponseWriter, r *http.Request) {
	lowest := ""
	get := func(ctx context.Context, b *backend.Backend) ([]byte, error) {
		return h.Fleet.Get(ctx, b, "/api/version")
	}
	for _, res := range fan(r.Context(), h.Fleet, "/api/version", get) {
		if res.err != nil {
			continue
		}
		var v struct {
			Version string `json:"version"`
		}
		if json.Unmarshal(res.v, &v) != nil || v.Version == "" {
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
func merge(lists map[*backend.Backend]*catalog.List, order []*backend.Backend) []json.RawMessage {
	byName := map[string]*mergedModel{}
	var names []string
	for _, b := range order {
		for _, m := range lists[b].Models {
			key := catalog.Normalize(m.Name)
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

// tags merges every backend's model list, read live so that changes made
// directly on a backend show at once (and kept in the fleet's cache), in
// Ollama's shape whatever the backend's dialect, with the configured
// aliases some backend can serve.
func (h *Handler) tags(w http.ResponseWriter, r *http.Request) {
	lists, order, ok := h.liveLists(r.Context(), "/api/tags", h.Fleet.ReadModels)
	if !ok {
		WriteError(w, http.StatusServiceUnavailable, "no backend is reachable")
		return
	}
	models := merge(lists, order)
	writeJSON(w, http.StatusOK, map[string]any{"models": allowedEntries(r.Context(), append(models, h.aliasTags(lists, models)...))})
}

// aliasTags lists each configured alias some listed backend can serve, as
// its first available target's entry under the public name, with the
// backends that serve it. Names already listed are left alone.
func (h *Handler) aliasTags(lists map[*backend.Backend]*catalog.List, listed []json.RawMessage) []json.RawMessage {
	taken := map[string]bool{}
	for _, raw := range listed {
		var m struct {
			Name string `json:"name"`
		}
		json.Unmarshal(raw, &m) //nolint:errcheck // our own output
		taken[catalog.Normalize(m.Name)] = true
	}
	byName := map[string]*catalog.List{}
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
		if taken[catalog.Normalize(public)] {
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

// ps merges every backend's loaded models, read live.
func (h *Handler) ps(w http.ResponseWriter, r *http.Request) {
	lists, order, ok := h.liveLists(r.Context(), "/api/ps", h.Fleet.ReadLoaded)
	if !ok {
		WriteError(w, http.StatusServiceUnavailable, "no backend is reachable")
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"models": allowedEntries(r.Context(), merge(lists, order))})
}

// liveLists reads a list from every reachable backend serving route, its
// entries in Ollama's shape. ok is false when there are backends and none
// answered.
func (h *Handler) liveLists(ctx context.Context, route string, read func(context.Context, *backend.Backend) (*catalog.List, error)) (map[*backend.Backend]*catalog.List, []*backend.Backend, bool) {
	lists := map[*backend.Backend]*catalog.List{}
	var order []*backend.Backend
	for _, res := range fan(ctx, h.Fleet, route, read) {
		if res.err != nil {
			h.Log.Debug("model list unavailable", "backend", res.b.Name, "route", route, "err", res.err)
			continue
		}
		entries := make([]catalog.Model, len(res.v.Models))
		for i, m := range res.v.Models {
			entries[i] = catalog.Model{Name: m.Name, ExpiresAt: m.ExpiresAt, Raw: res.b.Dialect.OllamaEntry(m)}
		}
		lists[res.b] = catalog.NewList(entries)
		order = append(order, res.b)
	}
	return lists, order, len(order) > 0 || len(h.Fleet.Backends) == 0
}

// psDetails lists every loaded model on every backend, not de-duplicated:
// which endpoint runs which model, until when.
func (h *Handler) psDetails(w http.ResponseWriter, r *http.Request) {
	lists, order, _ := h.liveLists(r.Context(), "/api/ps", h.Fleet.ReadLoaded)
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
	if !auth.AllowsModel(r.Context(), hd.Model) {
		notAllowed(w, "/api/show", hd.Model)
		return
	}
	cands, err := h.Fleet.Candidates(r.Context(), hd.Model, nil, "/api/show")
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

// passAny sends a request that names no model to any reachable backend
// that relays Ollama's API, so its answer (Ollama's own error wording)
// reaches the client.
// Whatever status it answers is the answer: Ollama itself says 500 to some
// of these (an embed without a model), which says nothing of its health.
func (h *Handler) passAny(w http.ResponseWriter, r *http.Request, path string, body []byte) {
	for _, b := range h.Fleet.Reachable(dialect.Relay) {
		if h.passThrough(w, r, b, r.Method, path, body, true) {
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
