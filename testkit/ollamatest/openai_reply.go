package ollamatest

import (
	"math/rand/v2"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/droverhq/drover/pkg/jsonw"
)

// openaiJob is a validated /v1/chat/completions or /v1/completions request.
type openaiJob struct {
	job
	id    []byte // JSON-encoded "chatcmpl-N" / "cmpl-N"
	usage bool   // stream_options.include_usage
	tool  string // fake tool_call: the tool the reply calls ("" for text)
}

// runOpenAI is run's twin: slot, load, latency, then SSE or one JSON body.
func (s *Server) runOpenAI(w http.ResponseWriter, ew *errorRewriter, r *http.Request, j *openaiJob) {
	release, ok := s.acquire(ew, r, j.e)
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
	if j.empty { // /v1/completions without a prompt: Ollama's load reply
		s.openaiLoadReply(w, j)
		return
	}
	evaluated, ok := s.evalPrompt(r.Context(), &j.job)
	if !ok {
		return
	}
	defer evaluated()
	if j.stream {
		s.streamOpenAI(w, r, j)
	} else {
		s.onceOpenAI(w, ew, r, j)
	}
}

// appendHead opens a stream chunk (stream) or a whole body up to and
// including "choices":[ ; model is JSON ("" for error chunks). Field order
// follows Ollama's structs: completion chunks put model after choices.
func (j *openaiJob) appendHead(b []byte, stream bool, created int64, model []byte) []byte {
	b = append(b, `{"id":`...)
	b = append(b, j.id...)
	b = append(b, `,"object":"`...)
	switch {
	case j.kind == kindGenerate:
		b = append(b, "text_completion"...)
	case stream:
		b = append(b, "chat.completion.chunk"...)
	default:
		b = append(b, "chat.completion"...)
	}
	b = append(b, `","created":`...)
	b = strconv.AppendInt(b, created, 10)
	if j.kind == kindChat || !stream {
		b = append(b, `,"model":`...)
		b = append(b, model...)
		b = append(b, `,"system_fingerprint":"fp_ollama"`...)
	}
	return append(b, `,"choices":[`...)
}

// appendTail closes what appendHead opened; usage is nil for none.
func (j *openaiJob) appendTail(b []byte, stream bool, model []byte, usage *[2]int) []byte {
	b = append(b, ']')
	if j.kind == kindGenerate && stream {
		b = append(b, `,"model":`...)
		b = append(b, model...)
		b = append(b, `,"system_fingerprint":"fp_ollama"`...)
	}
	if usage != nil {
		b = appendUsage(b, usage[0], usage[1])
	}
	return append(b, '}')
}

func appendUsage(b []byte, prompt, completion int) []byte {
	b = append(b, `,"usage":{"prompt_tokens":`...)
	b = strconv.AppendInt(b, int64(prompt), 10)
	b = append(b, `,"completion_tokens":`...)
	b = strconv.AppendInt(b, int64(completion), 10)
	b = append(b, `,"total_tokens":`...)
	b = strconv.AppendInt(b, int64(prompt+completion), 10)
	return append(b, '}')
}

// appendChoice writes one choice. content, reasoning and finish are JSON
// values (finish "null" while streaming); toolCall is a JSON tool call or nil.
// delta selects the chunk form ("delta") over the body form ("message").
func (j *openaiJob) appendChoice(b []byte, delta bool, content, reasoning, toolCall []byte, finish string) []byte {
	if j.kind == kindGenerate {
		b = append(b, `{"text":`...)
		b = append(b, content...)
		b = append(b, `,"index":0,"finish_reason":`...)
		b = append(b, finish...)
		return append(b, '}')
	}
	if delta {
		b = append(b, `{"index":0,"delta":{"role":"assistant","content":`...)
	} else {
		b = append(b, `{"index":0,"message":{"role":"assistant","content":`...)
	}
	b = append(b, content...)
	if len(reasoning) > 0 {
		b = append(b, `,"reasoning":`...)
		b = append(b, reasoning...)
	}
	if len(toolCall) > 0 {
		b = append(b, `,"tool_calls":[`...)
		b = append(b, toolCall...)
		b = append(b, ']')
	}
	b = append(b, `},"finish_reason":`...)
	b = append(b, finish...)
	return append(b, '}')
}

// zeroUsage is what /v1/completions puts on every chunk under include_usage.
var zeroUsage = [2]int{}

func (j *openaiJob) chunkUsage() *[2]int {
	if j.kind == kindGenerate && j.usage {
		return &zeroUsage
	}
	return nil
}

// appendToolCall is openai.ToolCall for the fake's one call, with a fresh
// id like Ollama's toolCallId.
func (j *openaiJob) appendToolCall(b []byte) []byte {
	const letters = "abcdefghijklmnopqrstuvwxyz0123456789"
	b = append(b, `{"id":"call_`...)
	for range 8 {
		b = append(b, letters[rand.IntN(len(letters))])
	}
	b = append(b, `","index":0,"type":"function","function":{"name":`...)
	b = jsonw.AppendString(b, j.tool)
	return append(b, `,"arguments":"{}"}}`...)
}

func (j *openaiJob) finishReason() string {
	if j.tool != "" {
		return `"tool_calls"`
	}
	return `"` + j.plan.doneReason + `"`
}

var (
	sseData    = []byte("data: ")
	sseDone    = []byte("data: [DONE]\n\n")
	jsonEmpty  = []byte(`""`)
	finishNull = "null"
)

func frame(b []byte) []byte { return append(b, '\n', '\n') }

func (s *Server) streamOpenAI(w http.ResponseWriter, r *http.Request, j *openaiJob) {
	w.Header().Set("Content-Type", "text/event-stream")
	w.WriteHeader(http.StatusOK)
	rc := http.NewResponseController(w)
	ctx := r.Context()
	f := j.plan.fault
	if f == nil {
		f = &Fault{}
	}
	buf := make([]byte, 0, 384)
	for i := 0; i <= j.plan.chunks; i++ {
		switch {
		case at(f.FailAfterChunks, i, j.plan.chunks):
			s.stats.cut.Add(1)
			cut(w)
			return
		case at(f.ErrorAfterChunks, i, j.plan.chunks):
			// Ollama's middleware reads the {"error":...} line as an empty
			// response: one empty chunk without a model, and no [DONE].
			buf = j.appendHead(append(buf[:0], sseData...), true, time.Now().Unix(), jsonEmpty)
			buf = j.appendChoice(buf, true, jsonEmpty, nil, nil, finishNull)
			w.Write(frame(j.appendTail(buf, true, jsonEmpty, j.chunkUsage())))
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
		thinking := i < j.plan.thinking
		if j.tool != "" && !thinking && i < j.plan.chunks-1 {
			continue // the tool parser swallows the call's tokens until it is whole
		}
		tok := tokenJSON[i%len(tokenJSON)]
		buf = j.appendHead(append(buf[:0], sseData...), true, time.Now().Unix(), j.model)
		switch {
		case thinking && j.kind == kindChat:
			buf = j.appendChoice(buf, true, jsonEmpty, tok, nil, finishNull)
		case thinking:
			buf = j.appendChoice(buf, true, jsonEmpty, nil, nil, finishNull)
		case j.tool != "":
			buf = j.appendChoice(buf, true, jsonEmpty, nil, j.appendToolCall(nil), finishNull)
		default:
			buf = j.appendChoice(buf, true, tok, nil, nil, finishNull)
		}
		if _, err := w.Write(frame(j.appendTail(buf, true, j.model, j.chunkUsage()))); err != nil {
			return
		}
		// As stream does: flush the first chunk and paced ones; let
		// net/http's buffer batch the rest.
		if i == 0 || j.plan.delay > 0 {
			if rc.Flush() != nil {
				return
			}
		}
	}
	now := time.Now().Unix()
	buf = j.appendHead(append(buf[:0], sseData...), true, now, j.model)
	buf = j.appendChoice(buf, true, jsonEmpty, nil, nil, j.finishReason())
	buf = frame(j.appendTail(buf, true, j.model, j.chunkUsage()))
	if j.usage {
		buf = j.appendHead(append(buf, sseData...), true, now, j.model)
		buf = frame(j.appendTail(buf, true, j.model, &[2]int{j.plan.promptTokens, j.plan.chunks}))
	}
	if _, err := w.Write(append(buf, sseDone...)); err != nil {
		return
	}
	// Flushed is delivered: a client that hangs up right after reading
	// the end (as OpenAI's SDKs do at [DONE]) still got the counts.
	if rc.Flush() != nil {
		return
	}
	s.countFinal(&j.job)
}

func (s *Server) onceOpenAI(w http.ResponseWriter, ew *errorRewriter, r *http.Request, j *openaiJob) {
	f := j.plan.fault
	if f == nil {
		f = &Fault{}
	}
	for i := 0; i <= j.plan.chunks; i++ {
		switch {
		case at(f.FailAfterChunks, i, j.plan.chunks):
			s.stats.cut.Add(1)
			hangUp(w)
			return
		case at(f.ErrorAfterChunks, i, j.plan.chunks):
			writeError(ew, http.StatusInternalServerError, f.errorMessage(0))
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
		switch {
		case i < j.plan.thinking:
			thinking.WriteString(tokenWords[i%len(tokenWords)])
		case j.tool == "":
			content.WriteString(tokenWords[i%len(tokenWords)])
		}
	}
	var reasoning, call []byte
	if j.kind == kindChat && thinking.Len() > 0 {
		reasoning = jsonw.AppendString(nil, thinking.String())
	}
	if j.tool != "" {
		call = j.appendToolCall(nil)
	}
	b := j.appendHead(make([]byte, 0, 512), false, time.Now().Unix(), j.model)
	b = j.appendChoice(b, false, jsonw.AppendString(nil, content.String()), reasoning, call, j.finishReason())
	b = j.appendTail(b, false, j.model, &[2]int{j.plan.promptTokens, j.plan.chunks})
	w.Header().Set("Content-Type", "application/json")
	writeRaw(w, http.StatusOK, append(b, '\n'))
	if r.Context().Err() == nil {
		s.countFinal(&j.job)
	}
}

// openaiLoadReply is /v1/completions' answer to an empty prompt: Ollama's
// load reply (done_reason "load", no counts) in the middleware's shape.
func (s *Server) openaiLoadReply(w http.ResponseWriter, j *openaiJob) {
	now := time.Now().Unix()
	if !j.stream {
		b := j.appendHead(nil, false, now, j.model)
		b = j.appendChoice(b, false, jsonEmpty, nil, nil, `"load"`)
		w.Header().Set("Content-Type", "application/json")
		writeRaw(w, http.StatusOK, append(j.appendTail(b, false, j.model, &zeroUsage), '\n'))
		return
	}
	b := j.appendHead(append([]byte(nil), sseData...), true, now, j.model)
	b = j.appendChoice(b, true, jsonEmpty, nil, nil, `"load"`)
	b = frame(j.appendTail(b, true, j.model, j.chunkUsage()))
	if j.usage {
		b = j.appendHead(append(b, sseData...), true, now, j.model)
		b = frame(j.appendTail(b, true, j.model, &zeroUsage))
	}
	w.Header().Set("Content-Type", "text/event-stream")
	w.WriteHeader(http.StatusOK)
	w.Write(append(b, sseDone...))
}
