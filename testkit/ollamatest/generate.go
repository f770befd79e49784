package ollamatest

import (
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/droverhq/drover/pkg/jsonw"
)

// tokens are the reply pieces, one per content chunk, pre-encoded as JSON strings.
var tokenWords = []string{" llama", " three", " fast", " fake", " token", " herd", " drover", " reply"}

var tokenJSON = func() [][]byte {
	out := make([][]byte, len(tokenWords))
	for i, w := range tokenWords {
		out[i] = jsonw.AppendString(nil, w)
	}
	return out
}()

// ReplyText is the content a reply of n chunks carries (thinking chunks
// excluded), for tests that check what went through.
func ReplyText(n int) string {
	var b strings.Builder
	for i := range n {
		b.WriteString(tokenWords[i%len(tokenWords)])
	}
	return b.String()
}

type genKind int

const (
	kindChat genKind = iota
	kindGenerate
)

// job is one chat or generate request after validation.
type job struct {
	kind      genKind
	e         *entry
	model     []byte // the request's model name, JSON-encoded (Ollama echoes it)
	stream    bool
	keepAlive time.Duration
	empty     bool // no messages/prompt: load only
	raw       bool // generate with raw: Ollama sends no context
	plan      plan
	start     time.Time
	prompt    *promptHash   // the prompt's tokens in cache blocks (prefixcache.go)
	cached    int           // prompt tokens found in the slot's cache
	evalCost  time.Duration // PromptTokenCost for the uncached tokens
}

func (s *Server) handleChat(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	var req chatRequest
	if !decode(w, r, &req, "ChatRequest") || !s.applyFault(w, r, req.Fake) || s.serverFailure(w) {
		return
	}
	if !parseName(req.Model).valid() {
		writeError(w, http.StatusBadRequest, "model is required")
		return
	}
	e := s.lookup(req.Model)
	if e == nil {
		writeError(w, http.StatusNotFound, fmt.Sprintf("model '%s' not found", req.Model))
		return
	}
	ka := s.keepAlive(req.KeepAlive)
	if len(req.Messages) == 0 && req.KeepAlive != nil && ka == 0 {
		s.unload(e)
		writeRaw(w, http.StatusOK, s.doneOnly(kindChat, req.Model, "unload"))
		return
	}
	think := s.checkThink(w, e, req.Model, req.Think)
	if think < 0 {
		return
	}
	want := []Capability{CapCompletion}
	if len(req.Tools) > 0 {
		want = append(want, CapTools)
	}
	if !s.checkCaps(w, e, req.Model, "chat", want) || !validOptions(w, req.Options) {
		return
	}
	prompt, ph := 0, newPromptHash()
	for _, m := range req.Messages {
		prompt += countWords(m.Content) + PerMessageTokens
		ph.message(m.Role, m.Content)
	}
	s.run(w, r, &job{kind: kindChat, e: e, model: jsonw.AppendString(nil, req.Model),
		stream: req.Stream == nil || *req.Stream, keepAlive: ka, empty: len(req.Messages) == 0,
		plan: s.makePlan(prompt, req.Options, req.Fake, think > 0), start: start, prompt: ph})
}

func (s *Server) handleGenerate(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	var req generateRequest
	if !decode(w, r, &req, "GenerateRequest") || !s.applyFault(w, r, req.Fake) || s.serverFailure(w) {
		return
	}
	var e *entry
	if parseName(req.Model).valid() {
		e = s.lookup(req.Model)
	}
	if e == nil {
		writeError(w, http.StatusNotFound, fmt.Sprintf("model '%s' not found", req.Model))
		return
	}
	ka := s.keepAlive(req.KeepAlive)
	if req.Prompt == "" && req.KeepAlive != nil && ka == 0 {
		s.unload(e)
		writeRaw(w, http.StatusOK, s.doneOnly(kindGenerate, req.Model, "unload"))
		return
	}
	if req.Raw && req.System != "" {
		writeError(w, http.StatusBadRequest, "raw mode does not support template, system, or context")
		return
	}
	think := s.checkThink(w, e, req.Model, req.Think)
	if think < 0 {
		return
	}
	want := []Capability{CapCompletion}
	if req.Suffix != "" {
		want = append(want, CapInsert)
	}
	if !s.checkCaps(w, e, req.Model, "generate", want) || !validOptions(w, req.Options) {
		return
	}
	prompt := countWords(req.Prompt) + countWords(req.Suffix) + PerMessageTokens
	if req.System != "" {
		prompt += countWords(req.System) + PerMessageTokens
	}
	s.run(w, r, &job{kind: kindGenerate, e: e, model: jsonw.AppendString(nil, req.Model),
		stream: req.Stream == nil || *req.Stream, keepAlive: ka, empty: req.Prompt == "", raw: req.Raw,
		plan: s.makePlan(prompt, req.Options, req.Fake, think > 0), start: start,
		prompt: generatePromptHash(req.System, req.Prompt, req.Suffix)})
}

// checkThink mirrors Ollama: thinking models think unless told not to; asking
// a model without the capability to think is a 400. It returns 1 (think),
// 0 (don't) or -1 (answered with an error).
func (s *Server) checkThink(w http.ResponseWriter, e *entry, reqModel string, t *thinkValue) int {
	if e.caps[CapThinking] {
		if t == nil || !t.set || t.on {
			return 1
		}
		return 0
	}
	if t.enabled() {
		writeError(w, http.StatusBadRequest, fmt.Sprintf("%q does not support thinking", reqModel))
		return -1
	}
	return 0
}

// checkCaps answers Ollama's 400s for missing capabilities; verb is "chat"
// or "generate" for the missing-completion message.
func (s *Server) checkCaps(w http.ResponseWriter, e *entry, reqModel, verb string, want []Capability) bool {
	var missing []string
	for _, c := range want {
		if !e.caps[c] {
			if c == CapCompletion {
				writeError(w, http.StatusBadRequest, fmt.Sprintf("%q does not support %s", reqModel, verb))
				return false
			}
			missing = append(missing, string(c))
		}
	}
	if len(missing) > 0 {
		writeError(w, http.StatusBadRequest, e.full+" does not support "+strings.Join(missing, "\n"))
		return false
	}
	return true
}

// doneOnly is the body of a load or unload answer.
func (s *Server) doneOnly(kind genKind, model, reason string) []byte {
	b := append([]byte(`{"model":`), jsonw.AppendString(nil, model)...)
	b = append(b, `,"created_at":`...)
	b = appendTime(b, time.Now().UTC())
	if kind == kindChat {
		b = append(b, `,"message":{"role":"assistant","content":""}`...)
	} else {
		b = append(b, `,"response":""`...)
	}
	b = append(b, `,"done":true,"done_reason":`...)
	b = jsonw.AppendString(b, reason)
	return append(b, '}')
}

// acquire takes a Parallel slot for e, queueing like Ollama's scheduler; it
// answers 503 when the queue is full. The returned release must be called.
func (s *Server) acquire(w http.ResponseWriter, r *http.Request, e *entry) (release func(), ok bool) {
	ms := s.slots(e.name.key())
	if ms.sem != nil {
		select {
		case ms.sem <- struct{}{}:
		default:
			if n := s.waiting.Add(1); s.cfg.MaxQueue > 0 && n > int64(s.cfg.MaxQueue) {
				s.waiting.Add(-1)
				writeError(w, http.StatusServiceUnavailable, "server busy, please try again.  maximum pending requests exceeded")
				return nil, false
			}
			select {
			case ms.sem <- struct{}{}:
				s.waiting.Add(-1)
			case <-r.Context().Done():
				s.waiting.Add(-1)
				return nil, false
			case <-s.done:
				s.waiting.Add(-1)
				return nil, false
			}
		}
	}
	ms.enter()
	return func() {
		ms.leave()
		if ms.sem != nil {
			<-ms.sem
		}
	}, true
}

// load marks the model loaded, simulating load time when it was not.
func (s *Server) load(r *http.Request, e *entry, keepAlive time.Duration) bool {
	if !s.touch(e, keepAlive, time.Now()) && s.cfg.LoadDuration > 0 {
		return s.sleep(r.Context(), s.cfg.LoadDuration)
	}
	return true
}

func appendContext(b []byte, n int) []byte {
	b = append(b, `,"context":[`...)
	for i := range n {
		if i > 0 {
			b = append(b, ',')
		}
		b = strconv.AppendInt(b, int64(3+(i*37)%480), 10)
	}
	return append(b, ']')
}
