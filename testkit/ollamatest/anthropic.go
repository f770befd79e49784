package ollamatest

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/droverhq/drover/pkg/jsonw"
)

// Ollama serves Anthropic's Messages API at POST /v1/messages through a
// middleware (middleware/anthropic.go) that turns the request into a chat
// and every chat chunk into Anthropic's shape. The fake does the same with
// the chat's building blocks.
//
// Wire facts copied from Ollama v0.17.4:
//   - the middleware's own 400s (bad JSON, "model is required", "max_tokens
//     is required and must be positive", "messages is required"): gin's
//     AbortWithStatusJSON, Content-Type "application/json; charset=utf-8",
//     no trailing newline;
//   - errors are {"type":"error","error":{"type","message"},"request_id":
//     "req_<24 hex>"}, the type by status (anthropic.NewError): 400
//     invalid_request_error, 404 not_found_error, 503 overloaded_error, any
//     other api_error; what the chat handler answers with a status other
//     than 200 has Content-Type "application/json" and a trailing newline;
//   - a stream request gets Cache-Control: no-cache and Connection:
//     keep-alive before anything is checked, errors included;
//   - a message is {"id":"msg_<24 hex>","type":"message","role":
//     "assistant","model","content":[...],"stop_reason","usage":
//     {"input_tokens","output_tokens"}} plus a newline; stop_reason is
//     end_turn for "stop", max_tokens for "length", tool_use for a call;
//   - a stream is "event: NAME\ndata: {json}\n\n" per event: message_start
//     (usage.input_tokens an estimate, len/4 of the request's text, and
//     output_tokens 0), content_block_start, a content_block_delta per
//     token, content_block_stop, message_delta (usage with the real
//     input_tokens and output_tokens), message_stop; no ping;
//   - an in-stream error (a fault's error_after_chunks) writes nothing more:
//     the stream ends without message_stop.
//
// The fake's counts: the prompt is PerMessageTokens plus the words of each
// text (system, string content, or text block); max_tokens is num_predict,
// so a reply has max_tokens tokens unless a fault says otherwise. The
// "fake" object of the OpenAI routes (tool_call included) works here too.

// MessagesRequest is the body of /v1/messages, named as Ollama's type is in
// JSON type errors.
type MessagesRequest struct {
	Model     string             `json:"model"`
	MaxTokens int                `json:"max_tokens"`
	Messages  []anthropicMessage `json:"messages"`
	System    any                `json:"system,omitempty"`
	Stream    bool               `json:"stream,omitempty"`
	Tools     []anthropicTool    `json:"tools,omitempty"`
	Fake      *openaiFault       `json:"fake"`
}

type anthropicMessage struct {
	Role    string `json:"role"`
	Content any    `json:"content"`
}

type anthropicTool struct {
	Type        string          `json:"type,omitempty"`
	Name        string          `json:"name"`
	Description string          `json:"description,omitempty"`
	InputSchema json.RawMessage `json:"input_schema,omitempty"`
}

// serveMessages answers /v1/messages whatever the method.
func (s *Server) serveMessages(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		w.Header().Set("Content-Type", "text/plain")
		w.Header().Set("Allow", "POST")
		w.WriteHeader(http.StatusMethodNotAllowed)
		w.Write([]byte("405 method not allowed"))
		return
	}
	ew := anthropicErrors(w)
	var hf *openaiFault
	if h := r.Header.Get(FaultHeader); h != "" {
		var f openaiFault
		if err := json.Unmarshal([]byte(h), &f); err == nil {
			if !s.applyFault(ew, r, &f.Fault) {
				return
			}
			hf = &f
		}
	}
	s.handleMessages(w, ew, r, hf)
}

func (s *Server) handleMessages(w http.ResponseWriter, ew *errorRewriter, r *http.Request, hf *openaiFault) {
	start := time.Now()
	var req MessagesRequest
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
		badAnthropicRequest(w, strings.Replace(err.Error(), "ollamatest.", "anthropic.", -1))
		return
	}
	switch {
	case req.Model == "":
		badAnthropicRequest(w, "model is required")
		return
	case req.MaxTokens <= 0:
		badAnthropicRequest(w, "max_tokens is required and must be positive")
		return
	case len(req.Messages) == 0:
		badAnthropicRequest(w, "messages is required")
		return
	}
	if !s.applyFault(ew, r, req.Fake.fault()) {
		return
	}
	if req.Stream {
		w.Header().Set("Content-Type", "text/event-stream")
		w.Header().Set("Cache-Control", "no-cache")
		w.Header().Set("Connection", "keep-alive")
	}
	// From here on Ollama's ChatHandler answers, through the middleware.
	if s.serverFailure(ew) {
		return
	}
	if !parseName(req.Model).valid() {
		writeError(ew, http.StatusBadRequest, "model is required")
		return
	}
	e := s.lookup(req.Model)
	if e == nil {
		writeError(ew, http.StatusNotFound, fmt.Sprintf("model '%s' not found", req.Model))
		return
	}
	want := []Capability{CapCompletion}
	if len(req.Tools) > 0 {
		want = append(want, CapTools)
	}
	if !s.checkCaps(ew, e, req.Model, "chat", want) {
		return
	}
	f := pickFault(hf, req.Fake)
	j := &messagesJob{
		job: job{kind: kindChat, e: e, model: jsonw.AppendString(nil, req.Model), stream: req.Stream,
			keepAlive: s.cfg.KeepAlive, start: start,
			plan: s.makePlan(messagesPromptTokens(&req), &options{NumPredict: float64(req.MaxTokens)}, f.fault(), false)},
		id: "msg_" + randomHex(), estimate: estimateInputTokens(&req),
	}
	if f != nil && f.ToolCall && len(req.Tools) > 0 && j.plan.chunks > 0 {
		j.tool = req.Tools[0].Name
	}
	s.runMessages(w, r, j)
}

// messagesJob is a validated /v1/messages request.
type messagesJob struct {
	job
	id       string
	estimate int    // message_start's input_tokens
	tool     string // fake tool_call: the tool the reply calls
}

func (s *Server) runMessages(w http.ResponseWriter, r *http.Request, j *messagesJob) {
	release, ok := s.acquire(anthropicErrors(w), r, j.e)
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
	if !s.sleep(r.Context(), time.Duration(s.latency.Load())) {
		return
	}
	if j.stream {
		s.streamMessages(w, r, j)
	} else {
		s.onceMessages(w, r, j)
	}
}

func (j *messagesJob) stopReason() string {
	switch {
	case j.tool != "":
		return "tool_use"
	case j.plan.doneReason == "stop":
		return "end_turn"
	case j.plan.doneReason == "length":
		return "max_tokens"
	}
	return "stop_sequence"
}

// appendToolUse is the fake's one call as a tool_use block; input is what
// the block carries ({} at a stream's content_block_start and in a whole
// message, as the fake's calls have no arguments).
func (j *messagesJob) appendToolUse(b []byte, id string) []byte {
	b = append(b, `{"type":"tool_use","id":`...)
	b = jsonw.AppendString(b, id)
	b = append(b, `,"name":`...)
	b = jsonw.AppendString(b, j.tool)
	return append(b, `,"input":{}}`...)
}

func appendEvent(b []byte, name string, data ...string) []byte {
	b = append(b, "event: "...)
	b = append(b, name...)
	b = append(b, "\ndata: "...)
	for _, d := range data {
		b = append(b, d...)
	}
	return append(b, '\n', '\n')
}

func appendUsageTokens(b []byte, in, out int) []byte {
	b = append(b, `"usage":{"input_tokens":`...)
	b = strconv.AppendInt(b, int64(in), 10)
	b = append(b, `,"output_tokens":`...)
	b = strconv.AppendInt(b, int64(out), 10)
	return append(b, '}')
}

func (s *Server) streamMessages(w http.ResponseWriter, r *http.Request, j *messagesJob) {
	w.WriteHeader(http.StatusOK)
	rc := http.NewResponseController(w)
	ctx := r.Context()
	f := j.plan.fault
	if f == nil {
		f = &Fault{}
	}
	model := string(j.model)
	start := `{"type":"message_start","message":{"id":"` + j.id + `","type":"message","role":"assistant","model":` + model +
		`,"content":[],` + string(appendUsageTokens(nil, j.estimate, 0)) + `}}`
	buf := make([]byte, 0, 512)
	started, open := false, false
	for i := 0; i <= j.plan.chunks; i++ {
		switch {
		case at(f.FailAfterChunks, i, j.plan.chunks):
			s.stats.cut.Add(1)
			cut(w)
			return
		case at(f.ErrorAfterChunks, i, j.plan.chunks):
			// The middleware reads the {"error":...} line as an empty
			// chat chunk: at most a message_start, then nothing.
			if !started {
				w.Write(appendEvent(nil, "message_start", start))
			}
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
		buf = buf[:0]
		if !started {
			started = true
			buf = appendEvent(buf, "message_start", start)
		}
		switch {
		case j.tool != "" && i < j.plan.chunks-1:
			// the tool parser swallows the call's tokens until it is whole
		case j.tool != "":
			buf = appendEvent(buf, "content_block_start", `{"type":"content_block_start","index":0,"content_block":`, string(j.appendToolUse(nil, toolUseID())), `}`)
			buf = appendEvent(buf, "content_block_delta", `{"type":"content_block_delta","index":0,"delta":{"type":"input_json_delta","partial_json":"{}"}}`)
			buf = appendEvent(buf, "content_block_stop", `{"type":"content_block_stop","index":0}`)
		default:
			if !open {
				open = true
				buf = appendEvent(buf, "content_block_start", `{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}`)
			}
			buf = appendEvent(buf, "content_block_delta", `{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":`, string(tokenJSON[i%len(tokenJSON)]), `}}`)
		}
		if len(buf) > 0 {
			if _, err := w.Write(buf); err != nil {
				return
			}
		}
		if i == 0 || j.plan.delay > 0 {
			if rc.Flush() != nil {
				return
			}
		}
	}
	buf = buf[:0]
	if !started {
		buf = appendEvent(buf, "message_start", start)
	}
	if open {
		buf = appendEvent(buf, "content_block_stop", `{"type":"content_block_stop","index":0}`)
	}
	buf = appendEvent(buf, "message_delta", `{"type":"message_delta","delta":{"stop_reason":"`+j.stopReason()+`"},`,
		string(appendUsageTokens(nil, j.plan.promptTokens, j.plan.chunks)), `}`)
	buf = appendEvent(buf, "message_stop", `{"type":"message_stop"}`)
	if _, err := w.Write(buf); err != nil {
		return
	}
	if rc.Flush() != nil {
		return
	}
	s.countFinal(&j.job)
}

func (s *Server) onceMessages(w http.ResponseWriter, r *http.Request, j *messagesJob) {
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
			writeError(anthropicErrors(w), http.StatusInternalServerError, f.errorMessage(0))
			return
		case at(f.HangAfterChunks, i, j.plan.chunks):
			s.hang(r, nil)
			return
		}
		if i < j.plan.chunks && j.plan.delay > 0 && !s.sleep(r.Context(), j.plan.delay) {
			return
		}
	}
	b := append(make([]byte, 0, 512), `{"id":"`...)
	b = append(b, j.id...)
	b = append(b, `","type":"message","role":"assistant","model":`...)
	b = append(b, j.model...)
	switch {
	case j.tool != "":
		b = append(b, `,"content":[`...)
		b = append(j.appendToolUse(b, toolUseID()), ']')
	case j.plan.chunks == 0:
		b = append(b, `,"content":null`...)
	default:
		b = append(b, `,"content":[{"type":"text","text":`...)
		b = jsonw.AppendString(b, ReplyText(j.plan.chunks))
		b = append(b, `}]`...)
	}
	b = append(b, `,"stop_reason":"`...)
	b = append(b, j.stopReason()...)
	b = append(b, `",`...)
	b = appendUsageTokens(b, j.plan.promptTokens, j.plan.chunks)
	w.Header().Set("Content-Type", "application/json")
	writeRaw(w, http.StatusOK, append(b, '}', '\n'))
	if r.Context().Err() == nil {
		s.countFinal(&j.job)
	}
}

// messagesPromptTokens is the fake's prompt count for a Messages request:
// the system prompt and each text as one chat message.
func messagesPromptTokens(req *MessagesRequest) int {
	n := 0
	if s, ok := req.System.(string); ok && s != "" {
		n += countWords(s) + PerMessageTokens
	}
	if blocks, ok := req.System.([]any); ok {
		var sys strings.Builder
		for _, b := range blocks {
			if m, ok := b.(map[string]any); ok && m["type"] == "text" {
				t, _ := m["text"].(string)
				sys.WriteString(t)
			}
		}
		if sys.Len() > 0 {
			n += countWords(sys.String()) + PerMessageTokens
		}
	}
	for _, m := range req.Messages {
		switch c := m.Content.(type) {
		case string:
			n += countWords(c) + PerMessageTokens
		case []any:
			for _, b := range c {
				bm, _ := b.(map[string]any)
				t, _ := bm["text"].(string)
				n += countWords(t) + PerMessageTokens
			}
		}
	}
	return n
}

// estimateInputTokens is Ollama's anthropic.EstimateInputTokens: len/4 of
// the request's text, at least 1.
func estimateInputTokens(req *MessagesRequest) int {
	total := countAnyContent(req.System)
	for _, m := range req.Messages {
		total += len(m.Role) + countAnyContent(m.Content)
	}
	for _, t := range req.Tools {
		total += len(t.Name) + len(t.Description) + len(t.InputSchema)
	}
	tokens := total / 4
	if tokens == 0 && (len(req.Messages) > 0 || req.System != nil) {
		tokens = 1
	}
	return tokens
}

func countAnyContent(content any) int {
	switch c := content.(type) {
	case nil:
		return 0
	case string:
		return len(c)
	case []any:
		total := 0
		for _, block := range c {
			total += countContentBlock(block)
		}
		return total
	default:
		data, _ := json.Marshal(c)
		return len(data)
	}
}

func countContentBlock(block any) int {
	m, ok := block.(map[string]any)
	if !ok {
		s, _ := block.(string)
		return len(s)
	}
	total := 0
	if t, ok := m["text"].(string); ok {
		total += len(t)
	}
	if t, ok := m["thinking"].(string); ok {
		total += len(t)
	}
	if m["type"] == "tool_use" || m["type"] == "tool_result" {
		data, _ := json.Marshal(m)
		total += len(data)
	}
	return total
}

// anthropicErrors rewrites the chat handler's error answers as Ollama's
// Anthropic middleware does.
func anthropicErrors(w http.ResponseWriter) *errorRewriter {
	return &errorRewriter{ResponseWriter: w, body: func(status int, msg string) []byte {
		return append(appendAnthropicError(nil, status, msg), '\n')
	}}
}

// anthropicErrorType is anthropic.NewError's type for a status.
func anthropicErrorType(status int) string {
	switch status {
	case http.StatusBadRequest:
		return "invalid_request_error"
	case http.StatusUnauthorized:
		return "authentication_error"
	case http.StatusForbidden:
		return "permission_error"
	case http.StatusNotFound:
		return "not_found_error"
	case http.StatusTooManyRequests:
		return "rate_limit_error"
	case http.StatusServiceUnavailable, 529:
		return "overloaded_error"
	}
	return "api_error"
}

func appendAnthropicError(b []byte, status int, msg string) []byte {
	b = append(b, `{"type":"error","error":{"type":"`...)
	b = append(b, anthropicErrorType(status)...)
	b = append(b, `","message":`...)
	b = jsonw.AppendString(b, msg)
	b = append(b, `},"request_id":"req_`...)
	b = append(b, randomHex()...)
	return append(b, `"}`...)
}

// badAnthropicRequest is the middleware's own 400.
func badAnthropicRequest(w http.ResponseWriter, msg string) {
	writeRaw(w, http.StatusBadRequest, appendAnthropicError(nil, http.StatusBadRequest, msg))
}

// randomHex is 24 hex digits, as Ollama's anthropic.generateID.
func randomHex() string {
	var b [12]byte
	rand.Read(b[:]) //nolint:errcheck // never fails (crypto/rand)
	return hex.EncodeToString(b[:])
}

// toolUseID is Ollama's tool call id, "call_" and 8 letters or digits.
func toolUseID() string {
	const letters = "abcdefghijklmnopqrstuvwxyz0123456789"
	var b [8]byte
	rand.Read(b[:]) //nolint:errcheck // never fails (crypto/rand)
	for i := range b {
		b[i] = letters[int(b[i])%len(letters)]
	}
	return "call_" + string(b[:])
}
