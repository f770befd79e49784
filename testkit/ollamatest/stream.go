package ollamatest

import (
	"net/http"
	"strings"
	"time"

	"github.com/droverhq/drover/pkg/jsonw"
)

// run serves a validated chat or generate job: it takes a slot, loads the
// model, then streams (NDJSON) or answers once (JSON).
func (s *Server) run(w http.ResponseWriter, r *http.Request, j *job) {
	release, ok := s.acquire(w, r, j.e)
	if !ok {
		return
	}
	defer release()
	if !s.load(r, j.e, j.keepAlive) {
		return
	}
	if j.keepAlive == 0 {
		defer s.unload(j.e)
	}
	loaded := time.Now()
	if j.empty {
		writeRaw(w, http.StatusOK, s.doneOnly(j.kind, string(j.model[1:len(j.model)-1]), "load"))
		return
	}
	evaluated, ok := s.evalPrompt(r.Context(), j)
	if !ok {
		return
	}
	defer evaluated()
	if j.stream {
		s.stream(w, r, j, loaded)
	} else {
		s.once(w, r, j, loaded)
	}
}

// chunkPrefix starts every chunk: {"model":M,"created_at":T
func (j *job) chunkPrefix(b []byte) []byte {
	b = append(b, `{"model":`...)
	b = append(b, j.model...)
	b = append(b, `,"created_at":`...)
	return appendTime(b, time.Now().UTC())
}

func (j *job) appendChunk(b []byte, i int) []byte {
	b = j.chunkPrefix(b)
	tok := tokenJSON[i%len(tokenJSON)]
	thinking := i < j.plan.thinking
	switch {
	case j.kind == kindChat && thinking:
		b = append(b, `,"message":{"role":"assistant","content":"","thinking":`...)
		b = append(b, tok...)
		b = append(b, '}')
	case j.kind == kindChat:
		b = append(b, `,"message":{"role":"assistant","content":`...)
		b = append(b, tok...)
		b = append(b, '}')
	case thinking:
		b = append(b, `,"response":"","thinking":`...)
		b = append(b, tok...)
	default:
		b = append(b, `,"response":`...)
		b = append(b, tok...)
	}
	return append(b, `,"done":false}`...)
}

// appendFinal writes the done chunk; content and thinking are the JSON
// strings to put in it ("" for a stream's final chunk).
func (j *job) appendFinal(b []byte, content, thinking string, start, loaded, first time.Time) []byte {
	end := time.Now()
	b = j.chunkPrefix(b)
	if j.kind == kindChat {
		b = append(b, `,"message":{"role":"assistant","content":`...)
		b = jsonw.AppendString(b, content)
		if thinking != "" {
			b = append(b, `,"thinking":`...)
			b = jsonw.AppendString(b, thinking)
		}
		b = append(b, '}')
	} else {
		b = append(b, `,"response":`...)
		b = jsonw.AppendString(b, content)
		if thinking != "" {
			b = append(b, `,"thinking":`...)
			b = jsonw.AppendString(b, thinking)
		}
	}
	b = append(b, `,"done":true,"done_reason":"`...)
	b = append(b, j.plan.doneReason...)
	b = append(b, '"')
	if j.kind == kindGenerate && !j.raw {
		b = appendContext(b, j.plan.promptTokens+j.plan.chunks)
	}
	load := max(loaded.Sub(start), 1)
	prompt := max(first.Sub(loaded), 1)
	if j.evalCost > 0 { // the uncached part only, exactly (prefixcache.go)
		prompt = j.evalCost
	}
	eval := max(end.Sub(first), 1)
	total := max(end.Sub(start), load+prompt+eval)
	b = appendIntField(b, "total_duration", int64(total))
	b = appendIntField(b, "load_duration", int64(load))
	b = appendIntField(b, "prompt_eval_count", int64(j.plan.promptTokens))
	b = appendIntField(b, "prompt_eval_duration", int64(prompt))
	if j.plan.chunks > 0 { // Ollama omits both when nothing was generated
		b = appendIntField(b, "eval_count", int64(j.plan.chunks))
		b = appendIntField(b, "eval_duration", int64(eval))
	}
	return append(b, '}')
}

func (s *Server) countFinal(j *job) {
	s.stats.promptEval.Add(int64(j.plan.promptTokens))
	s.stats.eval.Add(int64(j.plan.chunks))
	s.cachedPrompt.Add(int64(j.cached))
	s.stats.completed.Add(1) // last: a reader that sees it sees the rest
}

// at reports whether an *AfterChunks fault fires before chunk i of a reply
// of chunks chunks (i == chunks is "before the final chunk").
func at(n *int, i, chunks int) bool { return n != nil && max(min(*n, chunks), 0) == i }

func (s *Server) stream(w http.ResponseWriter, r *http.Request, j *job, loaded time.Time) {
	w.Header().Set("Content-Type", "application/x-ndjson")
	w.WriteHeader(http.StatusOK)
	rc := http.NewResponseController(w)
	ctx := r.Context()
	f := j.plan.fault
	if f == nil {
		f = &Fault{}
	}
	first := time.Now()
	buf := make([]byte, 0, 256)
	for i := 0; i <= j.plan.chunks; i++ {
		switch {
		case at(f.FailAfterChunks, i, j.plan.chunks):
			s.stats.cut.Add(1)
			cut(w)
			return
		case at(f.ErrorAfterChunks, i, j.plan.chunks):
			buf = append(append(buf[:0], `{"error":`...), jsonw.AppendString(nil, f.errorMessage(0))...)
			w.Write(append(buf, '}', '\n'))
			return
		case at(f.HangAfterChunks, i, j.plan.chunks):
			rc.Flush()
			s.hang(r, nil)
			return
		}
		if i == j.plan.chunks {
			break
		}
		if j.plan.delay > 0 && !s.sleep(ctx, j.plan.delay) {
			return
		}
		buf = append(j.appendChunk(buf[:0], i), '\n')
		if _, err := w.Write(buf); err != nil {
			return
		}
		// Flush every chunk when they are paced; otherwise let net/http's
		// buffer batch them (after the first, so time to first token is real).
		if i == 0 || j.plan.delay > 0 {
			if rc.Flush() != nil {
				return
			}
		}
		if i == 0 {
			first = time.Now()
		}
	}
	buf = append(j.appendFinal(buf[:0], "", "", j.start, loaded, first), '\n')
	if _, err := w.Write(buf); err != nil {
		return
	}
	// Flushed is delivered: a client that hangs up right after reading
	// the end (as OpenAI's SDKs do at [DONE]) still got the counts.
	if rc.Flush() != nil {
		return
	}
	s.countFinal(j)
}

func (s *Server) once(w http.ResponseWriter, r *http.Request, j *job, loaded time.Time) {
	f := j.plan.fault
	if f == nil {
		f = &Fault{}
	}
	first := time.Now()
	for i := 0; i <= j.plan.chunks; i++ {
		switch {
		case at(f.FailAfterChunks, i, j.plan.chunks):
			s.stats.cut.Add(1)
			hangUp(w)
			return
		case at(f.ErrorAfterChunks, i, j.plan.chunks):
			writeError(w, http.StatusInternalServerError, f.errorMessage(0))
			return
		case at(f.HangAfterChunks, i, j.plan.chunks):
			s.hang(r, nil)
			return
		}
		if i < j.plan.chunks && j.plan.delay > 0 && !s.sleep(r.Context(), j.plan.delay) {
			return
		}
	}
	var content, thinking strings.Builder
	for i := range j.plan.chunks {
		if i < j.plan.thinking {
			thinking.WriteString(tokenWords[i%len(tokenWords)])
		} else {
			content.WriteString(tokenWords[i%len(tokenWords)])
		}
	}
	body := j.appendFinal(make([]byte, 0, 512), content.String(), thinking.String(), j.start, loaded, first)
	writeRaw(w, http.StatusOK, body)
	if r.Context().Err() == nil {
		s.countFinal(j)
	}
}
