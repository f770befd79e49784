package ollamatest

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/http"
	"sync/atomic"
	"time"
)

// responsesRequest is the part of Ollama's openai.ResponsesRequest the fake
// acts on: the input becomes chat messages (a string one user message, a
// list one message per item), instructions a system message.
type responsesRequest struct {
	Model           string          `json:"model"`
	Input           json.RawMessage `json:"input"`
	Instructions    string          `json:"instructions"`
	MaxOutputTokens *int            `json:"max_output_tokens"`
	Temperature     *float64        `json:"temperature"`
	TopP            *float64        `json:"top_p"`
	Stream          *bool           `json:"stream"`
	Background      bool            `json:"background"`
	Fake            *openaiFault    `json:"fake"`
}

// serveResponses is POST /v1/responses as Ollama's ResponsesMiddleware and
// ChatHandler answer it: text replies only (no tools or reasoning), the
// stream's events and the whole Response with Ollama's fields and order.
func (s *Server) serveResponses(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		methodNotAllowed(w, "POST")
		return
	}
	start := time.Now()
	ew := openaiErrors(w)
	if h := r.Header.Get(FaultHeader); h != "" {
		var f openaiFault
		if err := json.Unmarshal([]byte(h), &f); err == nil && !s.applyFault(ew, r, &f.Fault) {
			return
		}
	}
	var req responsesRequest
	if !decodeOpenAI(w, r, &req) {
		return
	}
	msgs, err := responsesMessages(req)
	if err != nil {
		badOpenAIRequest(w, err.Error())
		return
	}
	stream := req.Stream != nil && *req.Stream
	if stream {
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
	if !s.checkCaps(ew, e, req.Model, "chat", []Capability{CapCompletion}) {
		return
	}
	prompt, err := openaiPromptTokens(msgs, newPromptHash())
	if err != nil {
		badOpenAIRequest(w, err.Error())
		return
	}
	j := &job{kind: kindChat, e: e, stream: stream, keepAlive: s.cfg.KeepAlive, start: start,
		plan: s.makePlan(prompt, maxTokens(req.MaxOutputTokens), req.Fake.fault(), false)}
	release, ok := s.acquire(ew, r, e)
	if !ok {
		return
	}
	defer release()
	if !s.load(r, e, j.keepAlive) {
		return
	}
	if j.keepAlive == 0 {
		defer s.unload(e)
	}
	if !s.sleep(r.Context(), time.Duration(s.latency.Load())) {
		return
	}
	for i := 0; i < j.plan.chunks && j.plan.delay > 0; i++ {
		if !s.sleep(r.Context(), j.plan.delay) {
			return
		}
	}
	rs := responseState{req: &req, id: fmt.Sprintf("resp_%d", rand.IntN(999999)), item: fmt.Sprintf("msg_%d", rand.IntN(999999)),
		created: time.Now().Unix(), text: ReplyText(j.plan.chunks), in: j.plan.promptTokens, out: j.plan.chunks}
	f := j.plan.fault
	switch {
	case f != nil && !stream && (f.ErrorAfterChunks != nil || f.FailAfterChunks != nil):
		// A whole Response is written at the end: a failed generation
		// is an error status, a dropped connection no answer at all.
		if f.FailAfterChunks != nil {
			s.stats.cut.Add(1)
			hangUp(w)
			return
		}
		writeError(ew, http.StatusInternalServerError, f.errorMessage(0))
		return
	case stream:
		rs.cuts = &s.stats.cut
		if !rs.stream(w, j.plan.chunks, f) {
			return // faulted or left: not a reply to count
		}
	default:
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusOK)
		json.NewEncoder(w).Encode(rs.whole())
	}
	if r.Context().Err() == nil {
		s.countFinal(j)
	}
}

// responsesMessages converts the input as openai.FromResponsesRequest does
// for text: instructions first as a system message, then the input.
func responsesMessages(req responsesRequest) ([]openaiMessage, error) {
	var msgs []openaiMessage
	if req.Instructions != "" {
		msgs = append(msgs, openaiMessage{Role: "system", Content: req.Instructions})
	}
	if len(req.Input) == 0 {
		return msgs, nil
	}
	var text string
	if json.Unmarshal(req.Input, &text) == nil {
		return append(msgs, openaiMessage{Role: "user", Content: text}), nil
	}
	var raw []json.RawMessage
	if err := json.Unmarshal(req.Input, &raw); err != nil {
		return nil, fmt.Errorf("input must be a string or array: %w", err)
	}
	for _, r := range raw {
		var it struct {
			Role    string          `json:"role"`
			Content json.RawMessage `json:"content"`
		}
		json.Unmarshal(r, &it) //nolint:errcheck // an item the fake does not know counts nothing
		if json.Unmarshal(it.Content, &text) == nil {
			msgs = append(msgs, openaiMessage{Role: it.Role, Content: text})
			continue
		}
		var parts []struct {
			Text string `json:"text"`
		}
		json.Unmarshal(it.Content, &parts) //nolint:errcheck // parts without text count nothing
		for _, p := range parts {
			msgs = append(msgs, openaiMessage{Role: it.Role, Content: p.Text})
		}
	}
	return msgs, nil
}

// responseState is one Response being answered.
type responseState struct {
	cuts     *atomic.Int64 // the server's count of cut streams
	req      *responsesRequest
	id, item string
	created  int64
	text     string
	in, out  int
}

func (rs *responseState) usage() map[string]any {
	return map[string]any{"input_tokens": rs.in, "output_tokens": rs.out, "total_tokens": rs.in + rs.out,
		"input_tokens_details": map[string]any{"cached_tokens": 0}, "output_tokens_details": map[string]any{"reasoning_tokens": 0}}
}

func (rs *responseState) outputText() map[string]any {
	return map[string]any{"type": "output_text", "text": rs.text, "annotations": []any{}, "logprobs": []any{}}
}

func (rs *responseState) message(status string, content []any) map[string]any {
	return map[string]any{"id": rs.item, "type": "message", "status": status, "role": "assistant", "content": content}
}

// object is the Response as the stream converter builds it (a map: keys
// sorted on the wire).
func (rs *responseState) object(status string, output []any, usage any, completedAt any) map[string]any {
	var instructions any
	if rs.req.Instructions != "" {
		instructions = rs.req.Instructions
	}
	return map[string]any{"id": rs.id, "object": "response", "created_at": rs.created, "completed_at": completedAt,
		"status": status, "incomplete_details": nil, "model": rs.req.Model, "previous_response_id": nil,
		"instructions": instructions, "output": output, "error": nil, "tools": []any{}, "tool_choice": "auto",
		"truncation": "disabled", "parallel_tool_calls": true, "text": map[string]any{"format": map[string]any{"type": "text"}},
		"top_p": deref(rs.req.TopP), "presence_penalty": 0, "frequency_penalty": 0, "top_logprobs": 0,
		"temperature": deref(rs.req.Temperature), "reasoning": nil, "usage": usage,
		"max_output_tokens": rs.req.MaxOutputTokens, "max_tool_calls": nil, "store": false,
		"background": rs.req.Background, "service_tier": "default", "metadata": map[string]any{},
		"safety_identifier": nil, "prompt_cache_key": nil}
}

func deref(f *float64) float64 {
	if f == nil {
		return 1
	}
	return *f
}

// stream writes the events of Ollama's ResponsesStreamConverter for a text
// reply of n tokens. A fault's ErrorAfterChunks stops after that many
// deltas, the body ending cleanly: the middleware reads the runner's
// {"error"} line as an empty chat chunk, for which the converter writes
// nothing, so no response.completed or error event follows.
// FailAfterChunks drops the connection there instead. It reports whether
// the whole stream was written.
func (rs *responseState) stream(w http.ResponseWriter, n int, f *Fault) bool {
	w.WriteHeader(http.StatusOK)
	rc := http.NewResponseController(w)
	seq := 0
	event := func(typ string, data map[string]any) bool {
		data["type"], data["sequence_number"] = typ, seq
		seq++
		b, _ := json.Marshal(data)
		_, err := fmt.Fprintf(w, "event: %s\ndata: %s\n\n", typ, b)
		return err == nil && rc.Flush() == nil
	}
	pending := rs.object("in_progress", []any{}, nil, nil)
	if !event("response.created", map[string]any{"response": pending}) ||
		!event("response.in_progress", map[string]any{"response": pending}) {
		return false
	}
	var output []any
	if n > 0 && rs.fails(w, f, 0, n) {
		return false // a fault before the first delta: no item was opened
	}
	if n > 0 {
		if !event("response.output_item.added", map[string]any{"output_index": 0, "item": rs.message("in_progress", []any{})}) ||
			!event("response.content_part.added", map[string]any{"item_id": rs.item, "output_index": 0, "content_index": 0,
				"part": map[string]any{"type": "output_text", "text": "", "annotations": []any{}, "logprobs": []any{}}}) {
			return false
		}
		for i := range n {
			if rs.fails(w, f, i, n) {
				return false
			}
			if !event("response.output_text.delta", map[string]any{"item_id": rs.item, "output_index": 0, "content_index": 0,
				"delta": tokenWords[i%len(tokenWords)], "logprobs": []any{}}) {
				return false
			}
		}
		if rs.fails(w, f, n, n) {
			return false
		}
		part := rs.outputText()
		if !event("response.output_text.done", map[string]any{"item_id": rs.item, "output_index": 0, "content_index": 0, "text": rs.text, "logprobs": []any{}}) ||
			!event("response.content_part.done", map[string]any{"item_id": rs.item, "output_index": 0, "content_index": 0, "part": part}) ||
			!event("response.output_item.done", map[string]any{"output_index": 0, "item": rs.message("completed", []any{part})}) {
			return false
		}
		output = []any{rs.message("completed", []any{part})}
	}
	return event("response.completed", map[string]any{"response": rs.object("completed", output, rs.usage(), time.Now().Unix())})
}

// whole is the non-stream Response, openai.ResponsesResponse's field order.
func (rs *responseState) whole() any {
	now := time.Now().Unix()
	var instructions *string
	if rs.req.Instructions != "" {
		instructions = &rs.req.Instructions
	}
	type usage struct {
		InputTokens         int            `json:"input_tokens"`
		OutputTokens        int            `json:"output_tokens"`
		TotalTokens         int            `json:"total_tokens"`
		InputTokensDetails  map[string]int `json:"input_tokens_details"`
		OutputTokensDetails map[string]int `json:"output_tokens_details"`
	}
	type content struct {
		Type        string `json:"type"`
		Text        string `json:"text"`
		Annotations []any  `json:"annotations"`
		Logprobs    []any  `json:"logprobs"`
	}
	type item struct {
		ID      string    `json:"id"`
		Type    string    `json:"type"`
		Status  string    `json:"status"`
		Role    string    `json:"role"`
		Content []content `json:"content"`
	}
	return struct {
		ID                 string         `json:"id"`
		Object             string         `json:"object"`
		CreatedAt          int64          `json:"created_at"`
		CompletedAt        int64          `json:"completed_at"`
		Status             string         `json:"status"`
		IncompleteDetails  any            `json:"incomplete_details"`
		Model              string         `json:"model"`
		PreviousResponseID any            `json:"previous_response_id"`
		Instructions       *string        `json:"instructions"`
		Output             []item         `json:"output"`
		Error              any            `json:"error"`
		Tools              []any          `json:"tools"`
		ToolChoice         string         `json:"tool_choice"`
		Truncation         string         `json:"truncation"`
		ParallelToolCalls  bool           `json:"parallel_tool_calls"`
		Text               map[string]any `json:"text"`
		TopP               float64        `json:"top_p"`
		PresencePenalty    float64        `json:"presence_penalty"`
		FrequencyPenalty   float64        `json:"frequency_penalty"`
		TopLogprobs        int            `json:"top_logprobs"`
		Temperature        float64        `json:"temperature"`
		Reasoning          any            `json:"reasoning"`
		Usage              usage          `json:"usage"`
		MaxOutputTokens    *int           `json:"max_output_tokens"`
		MaxToolCalls       any            `json:"max_tool_calls"`
		Store              bool           `json:"store"`
		Background         bool           `json:"background"`
		ServiceTier        string         `json:"service_tier"`
		Metadata           map[string]any `json:"metadata"`
		SafetyIdentifier   any            `json:"safety_identifier"`
		PromptCacheKey     any            `json:"prompt_cache_key"`
	}{ID: rs.id, Object: "response", CreatedAt: rs.created, CompletedAt: now, Status: "completed", Model: rs.req.Model,
		Instructions: instructions,
		Output: []item{{ID: rs.item, Type: "message", Status: "completed", Role: "assistant",
			Content: []content{{Type: "output_text", Text: rs.text, Annotations: []any{}, Logprobs: []any{}}}}},
		Tools: []any{}, ToolChoice: "auto", Truncation: "disabled", ParallelToolCalls: true,
		Text: map[string]any{"format": map[string]any{"type": "text"}}, TopP: deref(rs.req.TopP), Temperature: deref(rs.req.Temperature),
		Usage: usage{InputTokens: rs.in, OutputTokens: rs.out, TotalTokens: rs.in + rs.out,
			InputTokensDetails: map[string]int{"cached_tokens": 0}, OutputTokensDetails: map[string]int{"reasoning_tokens": 0}},
		MaxOutputTokens: rs.req.MaxOutputTokens, ServiceTier: "default", Metadata: map[string]any{}}
}

// methodNotAllowed is gin's answer to a known path with the wrong method.
func methodNotAllowed(w http.ResponseWriter, allow string) {
	w.Header().Set("Content-Type", "text/plain")
	w.Header().Set("Allow", allow)
	w.WriteHeader(http.StatusMethodNotAllowed)
	w.Write([]byte("405 method not allowed"))
}

// fails applies f before delta i of n: true when the stream ends there.
func (rs *responseState) fails(w http.ResponseWriter, f *Fault, i, n int) bool {
	switch {
	case f == nil:
		return false
	case at(f.FailAfterChunks, i, n):
		rs.cuts.Add(1)
		cut(w)
		return true
	case at(f.ErrorAfterChunks, i, n):
		return true
	}
	return false
}
