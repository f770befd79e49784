package ollamaapi

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"sort"
	"strings"
	"sync"

	"github.com/go-chi/chi/v5"
	"github.com/sourcegraph/conc"
	"github.com/sourcegraph/conc/iter"

	"github.com/droverhq/drover/services/proxy/internal/backend"
	"github.com/droverhq/drover/services/proxy/internal/forward"
)

// targets picks the backends a management call on route goes to: every
// reachable one serving it, or with needModel only those that have the
// model.
func (h *Handler) targets(ctx context.Context, route, model string, needModel bool) []*backend.Backend {
	var out []*backend.Backend
	for _, b := range h.Fleet.Reachable(route) {
		if needModel {
			l, err := h.Fleet.Models(ctx, b)
			if err != nil || !l.Has(model) {
				continue
			}
		}
		out = append(out, b)
	}
	return out
}

// maxProgressLine bounds one line of a backend's progress stream;
// maxAnswer bounds the answer kept from each backend of a fan-out.
const (
	maxProgressLine = 4 << 20
	maxAnswer       = 1 << 20
)

// progressLine is one line of Ollama's pull, push or create progress.
type progressLine struct {
	Status    string `json:"status,omitempty"`
	Digest    string `json:"digest,omitempty"`
	Total     int64  `json:"total,omitempty"`
	Completed int64  `json:"completed,omitempty"`
	Error     string `json:"error,omitempty"`
}

type backendLine struct {
	b      *backend.Backend
	line   progressLine
	status int    // HTTP status when the backend refused outright
	ct     string // the backend's Content-Type, for relaying its error
}

// progress fans a pull, push or create out to the Ollama backends at once
// and merges their progress into one NDJSON stream: per digest, totals and
// completed bytes are summed across backends, so one bar shows the fleet.
func (h *Handler) progress(route, verb string, needModel bool) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		body, hd, ok := h.request(w, r, route, "PullRequest")
		if !ok {
			return
		}
		targets := h.targets(r.Context(), route, hd.Model, needModel)
		if len(targets) == 0 {
			if needModel {
				WriteError(w, http.StatusNotFound, fmt.Sprintf("model '%s' not found", hd.Model))
			} else {
				WriteError(w, http.StatusServiceUnavailable, "no Ollama backend is reachable")
			}
			return
		}
		lines := make(chan backendLine, 64)
		var wg conc.WaitGroup
		for _, b := range targets {
			wg.Go(func() { h.readProgress(r.Context(), b, route, body, lines) })
		}
		go func() { wg.Wait(); close(lines) }()
		m := newProgressMerger(w, hd.streaming())
		failed := map[string]string{}
		var succeeded []string
		firstStatus, firstCT := 0, ""
		for bl := range lines {
			switch {
			case bl.line.Error != "":
				failed[bl.b.Name] = bl.line.Error
				if firstStatus == 0 {
					firstStatus, firstCT = bl.status, bl.ct
				}
			case bl.line.Status == "success":
				succeeded = append(succeeded, bl.b.Name)
			default:
				m.add(bl.b.Name, bl.line)
			}
		}
		var names []string
		for _, b := range targets {
			names = append(names, b.Name)
		}
		h.Fleet.Invalidate(names...)
		if len(failed) == 0 {
			m.finish(progressLine{Status: "success"}, http.StatusOK, "")
			return
		}
		h.Log.Warn(verb+" failed on some backends", "model", hd.Model, "failed", failed, "succeeded", succeeded)
		if firstStatus == 0 || len(succeeded) > 0 {
			firstStatus = http.StatusInternalServerError
		}
		m.finish(progressLine{Error: describeFailures(verb, failed, succeeded)}, firstStatus, firstCT)
	}
}

func describeFailures(verb string, failed map[string]string, succeeded []string) string {
	if len(succeeded) == 0 && len(failed) > 0 {
		// One message when every backend says the same thing.
		var msgs []string
		for _, m := range failed {
			msgs = append(msgs, m)
		}
		if same(msgs) {
			return msgs[0]
		}
	}
	var parts []string
	for name, msg := range failed {
		parts = append(parts, fmt.Sprintf("%s on %s: %s", verb, name, msg))
	}
	sort.Strings(parts)
	s := strings.Join(parts, "; ")
	if len(succeeded) > 0 {
		sort.Strings(succeeded)
		s += "; succeeded on " + strings.Join(succeeded, ", ")
	}
	return s
}

func same(msgs []string) bool {
	for _, m := range msgs[1:] {
		if m != msgs[0] {
			return false
		}
	}
	return true
}

// readProgress sends one backend's progress lines; it always ends with a
// success or an error line for that backend.
func (h *Handler) readProgress(ctx context.Context, b *backend.Backend, route string, body []byte, out chan<- backendLine) {
	ct := ""
	send := func(l progressLine, status int) { out <- backendLine{b: b, line: l, status: status, ct: ct} }
	req, err := b.NewRequest(ctx, http.MethodPost, route, bytes.NewReader(body))
	if err != nil {
		send(progressLine{Error: err.Error()}, http.StatusInternalServerError)
		return
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := b.Client.Do(req)
	if err != nil {
		send(progressLine{Error: err.Error()}, http.StatusBadGateway)
		return
	}
	defer resp.Body.Close()
	ct = resp.Header.Get("Content-Type")
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), maxProgressLine)
	sawEnd := false
	for sc.Scan() {
		var l progressLine
		if len(bytes.TrimSpace(sc.Bytes())) == 0 {
			continue
		}
		if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
			send(progressLine{Error: "bad progress line: " + err.Error()}, http.StatusBadGateway)
			return
		}
		if resp.StatusCode >= 400 && l.Error == "" {
			l.Error = fmt.Sprintf("status %d", resp.StatusCode)
		}
		if l.Error != "" || l.Status == "success" {
			sawEnd = true
		}
		send(l, resp.StatusCode)
		if l.Error != "" {
			return
		}
	}
	if err := sc.Err(); err != nil {
		send(progressLine{Error: err.Error()}, http.StatusBadGateway)
		return
	}
	if !sawEnd {
		if resp.StatusCode < 300 {
			send(progressLine{Status: "success"}, resp.StatusCode)
		} else {
			send(progressLine{Error: fmt.Sprintf("status %d", resp.StatusCode)}, resp.StatusCode)
		}
	}
}

// progressMerger owns the client's side of a merged progress stream.
type progressMerger struct {
	w       http.ResponseWriter
	stream  bool
	started bool
	last    string                              // last plain status written
	digests map[string]map[string]*progressLine // digest -> backend -> latest
}

func newProgressMerger(w http.ResponseWriter, stream bool) *progressMerger {
	return &progressMerger{w: w, stream: stream, digests: map[string]map[string]*progressLine{}}
}

func (m *progressMerger) add(backendName string, l progressLine) {
	if l.Digest == "" {
		if l.Status == m.last {
			return
		}
		m.last = l.Status
		m.write(l)
		return
	}
	per := m.digests[l.Digest]
	if per == nil {
		per = map[string]*progressLine{}
		m.digests[l.Digest] = per
	}
	per[backendName] = &l
	sum := progressLine{Status: l.Status, Digest: l.Digest}
	for _, p := range per {
		sum.Total += p.Total
		sum.Completed += p.Completed
	}
	m.last = ""
	m.write(sum)
}

func (m *progressMerger) write(l progressLine) {
	if !m.stream {
		return
	}
	if !m.started {
		m.w.Header().Set("Content-Type", "application/x-ndjson")
		m.w.WriteHeader(http.StatusOK)
		m.started = true
	}
	b, _ := json.Marshal(l)
	m.w.Write(append(b, '\n')) //nolint:errcheck // the client may be gone
	if f, ok := m.w.(http.Flusher); ok {
		f.Flush()
	}
}

// finish writes the last line, or for a non-streaming request the one answer.
// An error a backend streamed (status 200) is streamed; one it answered
// with an error status is answered with that status and Content-Type:
// Ollama's "application/json" without charset for a failure while working,
// with charset for a request it refused. A non-streaming success is the
// last line as "application/json", as Ollama's waitForStream writes it.
func (m *progressMerger) finish(l progressLine, status int, errCT string) {
	switch {
	case m.started || (m.stream && (l.Error == "" || status < 300)):
		m.write(l)
	case l.Error != "":
		if status < 300 {
			status = http.StatusInternalServerError
		}
		if !strings.HasPrefix(errCT, "application/json") {
			errCT = "application/json; charset=utf-8"
		}
		writeError(m.w, status, errCT, l.Error)
	default:
		m.w.Header().Set("Content-Type", "application/json")
		m.w.WriteHeader(http.StatusOK)
		json.NewEncoder(m.w).Encode(l) //nolint:errcheck // the client may be gone
	}
}

// simpleResult is one backend's answer to a copy or delete.
type simpleResult struct {
	b      *backend.Backend
	status int
	body   []byte
	err    error
}

// fanSimple sends the same request to each target and waits for all.
func (h *Handler) fanSimple(ctx context.Context, targets []*backend.Backend, method, path string, body []byte) []simpleResult {
	return iter.Map(targets, func(bp **backend.Backend) simpleResult {
		b := *bp
		req, err := b.NewRequest(ctx, method, path, bytes.NewReader(body))
		if err != nil {
			return simpleResult{b: b, err: err}
		}
		req.Header.Set("Content-Type", "application/json")
		resp, err := b.Client.Do(req)
		if err != nil {
			return simpleResult{b: b, err: err}
		}
		defer resp.Body.Close()
		out, err := io.ReadAll(io.LimitReader(resp.Body, maxAnswer))
		return simpleResult{b: b, status: resp.StatusCode, body: out, err: err}
	})
}

// answerSimple folds fan-out results into one answer: success if any backend
// succeeded and none failed other than "not found there"; the backends' own
// answer when all agree; otherwise an error naming each failure.
func answerSimple(w http.ResponseWriter, verb string, results []simpleResult) {
	var ok, notFound []simpleResult
	failed := map[string]string{}
	var succeeded []string
	for _, r := range results {
		switch {
		case r.err != nil:
			failed[r.b.Name] = r.err.Error()
		case r.status < 300:
			ok = append(ok, r)
			succeeded = append(succeeded, r.b.Name)
		case r.status == http.StatusNotFound:
			notFound = append(notFound, r)
		default:
			failed[r.b.Name] = errorText(r.body, r.status)
		}
	}
	switch {
	case len(failed) == 0 && len(ok) > 0:
		relay(w, ok[0])
	case len(failed) == 0 && len(notFound) > 0:
		relay(w, notFound[0])
	case len(failed) > 0 && len(ok) == 0 && len(notFound) == 0 && sameAnswer(results):
		// Every backend refused it alike (an invalid name): that answer.
		relay(w, results[0])
	default:
		WriteError(w, http.StatusInternalServerError, describeFailures(verb, failed, succeeded))
	}
}

// sameAnswer reports whether every backend answered with the same status
// and body.
func sameAnswer(results []simpleResult) bool {
	for _, r := range results {
		if r.err != nil || r.status != results[0].status || !bytes.Equal(r.body, results[0].body) {
			return false
		}
	}
	return len(results) > 0
}

func relay(w http.ResponseWriter, r simpleResult) {
	if len(r.body) > 0 {
		w.Header().Set("Content-Type", "application/json; charset=utf-8")
	}
	w.WriteHeader(r.status)
	w.Write(r.body) //nolint:errcheck
}

func errorText(body []byte, status int) string {
	var e struct {
		Error string `json:"error"`
	}
	if json.Unmarshal(body, &e) == nil && e.Error != "" {
		return e.Error
	}
	return fmt.Sprintf("status %d", status)
}

// copyModel copies on every backend that has the source model.
func (h *Handler) copyModel(w http.ResponseWriter, r *http.Request) {
	body, ok := readBody(w, r)
	if !ok {
		return
	}
	var req struct {
		Source string `json:"source"`
	}
	if json.Unmarshal(body, &req) != nil || req.Source == "" {
		h.passAny(w, r, "/api/copy", body)
		return
	}
	targets := h.targets(r.Context(), "/api/copy", req.Source, true)
	if len(targets) == 0 {
		WriteError(w, http.StatusNotFound, fmt.Sprintf("model %q not found", req.Source))
		return
	}
	results := h.fanSimple(r.Context(), targets, http.MethodPost, "/api/copy", body)
	h.Fleet.Invalidate(names(targets)...)
	answerSimple(w, "copy", results)
}

// deleteModel deletes on every Ollama backend; a backend without the model
// answers 404 and that is not a failure while another deleted it.
func (h *Handler) deleteModel(w http.ResponseWriter, r *http.Request) {
	body, ok := readBody(w, r)
	if !ok {
		return
	}
	hd, ok := parseHead(w, body, "DeleteRequest")
	if !ok {
		return
	}
	targets := h.targets(r.Context(), "/api/delete", "", false)
	if hd.Model == "" || len(targets) == 0 {
		h.passAny(w, r, "/api/delete", body)
		return
	}
	results := h.fanSimple(r.Context(), targets, http.MethodDelete, "/api/delete", body)
	h.Fleet.Invalidate(names(targets)...)
	answerSimple(w, "delete", results)
}

func names(bs []*backend.Backend) []string {
	out := make([]string, len(bs))
	for i, b := range bs {
		out[i] = b.Name
	}
	return out
}

// blobExists is 200 only when every Ollama backend has the blob, so a
// client uploads it when any lacks it.
func (h *Handler) blobExists(w http.ResponseWriter, r *http.Request) {
	targets := h.targets(r.Context(), "/api/blobs", "", false)
	if len(targets) == 0 {
		w.WriteHeader(http.StatusServiceUnavailable)
		return
	}
	path := "/api/blobs/" + chi.URLParam(r, "digest")
	for _, res := range h.fanSimple(r.Context(), targets, http.MethodHead, path, nil) {
		if res.err != nil || res.status != http.StatusOK {
			w.Header().Set("Content-Type", "application/json; charset=utf-8") // as Ollama's 404
			w.WriteHeader(http.StatusNotFound)
			return
		}
	}
	w.WriteHeader(http.StatusOK)
}

// blobUpload streams one upload to every Ollama backend at once.
func (h *Handler) blobUpload(w http.ResponseWriter, r *http.Request) {
	targets := h.targets(r.Context(), "/api/blobs", "", false)
	if len(targets) == 0 {
		WriteError(w, http.StatusServiceUnavailable, "no Ollama backend is reachable")
		return
	}
	path := "/api/blobs/" + chi.URLParam(r, "digest")
	writers := make([]*io.PipeWriter, len(targets))
	results := make([]simpleResult, len(targets))
	var wg sync.WaitGroup
	for i, b := range targets {
		pr, pw := io.Pipe()
		writers[i] = pw
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer pr.Close()
			req, err := b.NewRequest(r.Context(), http.MethodPost, path, pr)
			if err != nil {
				results[i] = simpleResult{b: b, err: err}
				return
			}
			req.ContentLength = r.ContentLength
			resp, err := b.Client.Do(req)
			if err != nil {
				results[i] = simpleResult{b: b, err: err}
				return
			}
			defer resp.Body.Close()
			out, _ := io.ReadAll(io.LimitReader(resp.Body, maxAnswer))
			results[i] = simpleResult{b: b, status: resp.StatusCode, body: out}
		}()
	}
	mw := make([]io.Writer, len(writers))
	for i, pw := range writers {
		mw[i] = pw
	}
	_, err := io.Copy(io.MultiWriter(mw...), r.Body)
	for _, pw := range writers {
		pw.CloseWithError(err)
	}
	wg.Wait()
	if err != nil {
		// The client's body failed (too large, too slow, cut): its fault,
		// not the backends'.
		status, msg := forward.BodyError(err)
		WriteError(w, status, msg)
		return
	}
	answerSimple(w, "blob upload", results)
}
