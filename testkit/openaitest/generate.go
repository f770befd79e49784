package openaitest

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"sort"
	"strings"
	"time"
)

var tokenWords = []string{" vllm", " llama", " fast", " fake", " token", " herd", " drover", " reply"}

// ReplyText is the text of a reply of n tokens.
func ReplyText(n int) string {
	var b strings.Builder
	for i := range n {
		b.WriteString(tokenWords[i%len(tokenWords)])
	}
	return b.String()
}

// request holds the fields the fake acts on; the rest is ignored.
type request struct {
	Model    string `json:"model"`
	Messages []struct {
		Role    string          `json:"role"`
		Content json.RawMessage `json:"content"`
	} `json:"messages"`
	Prompt        json.RawMessage `json:"prompt"`
	Input         json.RawMessage `json:"input"`
	Query         string          `json:"query"`
	Documents     []string        `json:"documents"`
	TopN          *int            `json:"top_n"`
	Stream        bool            `json:"stream"`
	StreamOptions *struct {
		IncludeUsage bool `json:"include_usage"`
	} `json:"stream_options"`
	MaxTokens           *int `json:"max_tokens"`
	MaxCompletionTokens *int `json:"max_completion_tokens"`
	Tools               []struct {
		Function struct {
			Name       string          `json:"name"`
			Parameters json.RawMessage `json:"parameters"`
		} `json:"function"`
	} `json:"tools"`
	ToolChoice     json.RawMessage `json:"tool_choice"`
	EncodingFormat string          `json:"encoding_format"`
	Fake           *Fault          `json:"fake"`
}

// inference is the shared front half of every POST route.
func (s *Server) inference(w http.ResponseWriter, r *http.Request, hf *Fault) {
	body, err := io.ReadAll(r.Body)
	if err != nil {
		return
	}
	s.mu.Lock()
	s.last[r.URL.Path] = body
	s.mu.Unlock()
	var req request
	if err := json.Unmarshal(body, &req); err != nil {
		writeError(w, http.StatusBadRequest, fmt.Sprintf("Invalid request body: %v", err), "")
		return
	}
	f := req.Fake
	if f == nil {
		f = hf
	}
	if !s.applyFault(w, r, f) {
		return
	}
	if fl := s.failure.Load(); fl != nil {
		writeError(w, fl.status, fl.msg, "")
		return
	}
	m, ok := s.models[req.Model]
	if !ok {
		writeError(w, http.StatusNotFound, fmt.Sprintf("The model `%s` does not exist.", req.Model), "NotFoundError")
		return
	}
	switch r.URL.Path {
	case "/v1/chat/completions", "/v1/completions":
		if m.Embedding || m.Rerank {
			writeError(w, http.StatusBadRequest, fmt.Sprintf("The model `%s` does not support generation.", m.ID), "")
			return
		}
		s.generate(w, r, m, &req, f)
	case "/v1/embeddings":
		s.embeddings(w, m, &req)
	case "/v1/rerank":
		s.rerank(w, m, &req)
	}
}

// plan is what a generation will produce.
type plan struct {
	chat         bool
	prompt       int
	tokens       int
	finish       string
	tool         string // function name to call, if any
	args         string // its arguments, a JSON object as a string
	reasoning    int    // leading tokens sent as reasoning
	delay        time.Duration
	usage        bool // report usage (and timings) at all
	streamUsage  bool // the usage-only chunk
	timings      bool
	failAfter    *int
	errorAfter   *int
	hangAfter    *int
	errorMessage string
}

func (s *Server) plan(r *http.Request, m Model, req *request, f *Fault) plan {
	p := plan{chat: r.URL.Path == "/v1/chat/completions", tokens: s.cfg.Chunks, finish: "stop", delay: s.cfg.ChunkDelay}
	if p.chat {
		for _, msg := range req.Messages {
			p.prompt += contentWords(msg.Content) + PerMessageTokens
		}
	} else {
		for _, prompt := range stringList(req.Prompt) {
			p.prompt += words(prompt) + PerMessageTokens
		}
	}
	limit := req.MaxTokens
	if req.MaxCompletionTokens != nil {
		limit = req.MaxCompletionTokens
	}
	if limit != nil && *limit >= 0 {
		p.tokens, p.finish = *limit, "length"
	}
	if p.chat && len(req.Tools) > 0 && !bytes.Equal(bytes.TrimSpace(req.ToolChoice), []byte(`"none"`)) {
		p.tool, p.args = req.Tools[0].Function.Name, toolArgs(req.Tools[0].Function.Parameters)
		p.tokens, p.finish = ToolCallTokens, "tool_calls"
	}
	p.usage = !s.cfg.NoUsage
	if f != nil {
		if f.Chunks != nil && p.tool == "" {
			p.tokens = max(*f.Chunks, 0)
		}
		if f.DelayMs > 0 {
			p.delay = time.Duration(f.DelayMs) * time.Millisecond
		}
		p.failAfter, p.errorAfter, p.hangAfter = f.FailAfterChunks, f.ErrorAfterChunks, f.HangAfterChunks
		p.errorMessage = f.message(http.StatusInternalServerError)
		p.usage = p.usage && !f.NoUsage
	}
	if m.Reasoning && p.chat && p.tool == "" {
		p.reasoning = p.tokens / 2
	}
	p.streamUsage = p.usage && req.StreamOptions != nil && req.StreamOptions.IncludeUsage
	p.timings = p.usage && s.cfg.Flavor == LlamaCpp
	return p
}

// contentWords counts a message's words: a string, or text parts.
func contentWords(raw json.RawMessage) int {
	var s string
	if json.Unmarshal(raw, &s) == nil {
		return words(s)
	}
	var parts []struct {
		Type string `json:"type"`
		Text string `json:"text"`
	}
	json.Unmarshal(raw, &parts) //nolint:errcheck // anything else has no words
	n := 0
	for _, p := range parts {
		n += words(p.Text)
	}
	return n
}

// stringList reads a string or an array of strings (token arrays count as
// one word per token).
func stringList(raw json.RawMessage) []string {
	var s string
	if json.Unmarshal(raw, &s) == nil {
		return []string{s}
	}
	var list []json.RawMessage
	json.Unmarshal(raw, &list) //nolint:errcheck // nothing else is a prompt
	var out []string
	var tokens []string
	for _, item := range list {
		if json.Unmarshal(item, &s) == nil {
			out = append(out, s)
			continue
		}
		var ids []int
		if json.Unmarshal(item, &ids) == nil {
			out = append(out, strings.Repeat("t ", len(ids)))
			continue
		}
		tokens = append(tokens, "t") // a bare token id
	}
	if len(tokens) > 0 {
		out = append(out, strings.Join(tokens, " "))
	}
	return out
}

// toolArgs makes arguments for a function's parameters schema: "fake" for
// strings, 1 for numbers, true for booleans, by property name.
func toolArgs(schema json.RawMessage) string {
	var sch struct {
		Properties map[string]struct {
			Type string `json:"type"`
		} `json:"properties"`
	}
	json.Unmarshal(schema, &sch) //nolint:errcheck // no schema: no arguments
	args := map[string]any{}
	names := make([]string, 0, len(sch.Properties))
	for n := range sch.Properties {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		switch sch.Properties[n].Type {
		case "number", "integer":
			args[n] = 1
		case "boolean":
			args[n] = true
		default:
			args[n] = "fake"
		}
	}
	b, _ := json.Marshal(args)
	return string(b)
}

type usage struct {
	PromptTokens     int `json:"prompt_tokens"`
	CompletionTokens int `json:"completion_tokens"`
	TotalTokens      int `json:"total_tokens"`
}

type timings struct {
	CacheN              int     `json:"cache_n"`
	PromptN             int     `json:"prompt_n"`
	PromptMs            float64 `json:"prompt_ms"`
	PromptPerTokenMs    float64 `json:"prompt_per_token_ms"`
	PromptPerSecond     float64 `json:"prompt_per_second"`
	PredictedN          int     `json:"predicted_n"`
	PredictedMs         float64 `json:"predicted_ms"`
	PredictedPerTokenMs float64 `json:"predicted_per_token_ms"`
	PredictedPerSecond  float64 `json:"predicted_per_second"`
}

func (p *plan) usageObj() *usage {
	return &usage{p.prompt, p.tokens, p.prompt + p.tokens}
}

func (p *plan) timingsObj() *timings {
	return &timings{PromptN: p.prompt, PromptMs: float64(p.prompt) * 0.1, PromptPerTokenMs: 0.1, PromptPerSecond: 10000,
		PredictedN: p.tokens, PredictedMs: float64(p.tokens) * 0.5, PredictedPerTokenMs: 0.5, PredictedPerSecond: 2000}
}

type toolCall struct {
	Index    *int   `json:"index,omitempty"`
	ID       string `json:"id,omitempty"`
	Type     string `json:"type,omitempty"`
	Function struct {
		Name      string `json:"name,omitempty"`
		Arguments string `json:"arguments"`
	} `json:"function"`
}

type message struct {
	Role             string     `json:"role,omitempty"`
	Content          *string    `json:"content,omitempty"`
	ReasoningContent *string    `json:"reasoning_content,omitempty"`
	ToolCalls        []toolCall `json:"tool_calls,omitempty"`
}

type choice struct {
	Index        int      `json:"index"`
	Text         *string  `json:"text,omitempty"`
	Message      *message `json:"message,omitempty"`
	Delta        *message `json:"delta,omitempty"`
	Logprobs     any      `json:"logprobs"`
	FinishReason *string  `json:"finish_reason"`
}

type reply struct {
	ID      string   `json:"id"`
	Object  string   `json:"object"`
	Created int64    `json:"created"`
	Model   string   `json:"model"`
	Choices []choice `json:"choices"`
	Usage   *usage   `json:"usage,omitempty"`
	Timings *timings `json:"timings,omitempty"`
}

func (s *Server) generate(w http.ResponseWriter, r *http.Request, m Model, req *request, f *Fault) {
	p := s.plan(r, m, req, f)
	id := fmt.Sprintf("chatcmpl-%d", s.ids.Add(1))
	object := "chat.completion"
	if !p.chat {
		id, object = fmt.Sprintf("cmpl-%d", s.ids.Load()), "text_completion"
	}
	base := reply{ID: id, Object: object, Created: time.Now().Unix(), Model: m.ID}
	if req.Stream {
		s.stream(w, r, base, p)
		return
	}
	if p.errorAfter != nil || p.failAfter != nil {
		writeError(w, http.StatusInternalServerError, p.errorMessage, "")
		return
	}
	for range p.tokens {
		if !s.sleep(r.Context(), p.delay) {
			return
		}
	}
	rep := base
	finish := p.finish
	c := choice{FinishReason: &finish}
	if p.chat {
		msg := &message{Role: "assistant"}
		switch {
		case p.tool != "":
			msg.ToolCalls = []toolCall{p.call(id, p.args, nil)}
		default:
			text := ReplyText(p.tokens)
			msg.Content = &text
			if p.reasoning > 0 {
				think, rest := ReplyText(p.tokens)[:len(ReplyText(p.reasoning))], ReplyText(p.tokens)[len(ReplyText(p.reasoning)):]
				msg.Content, msg.ReasoningContent = &rest, &think
			}
		}
		c.Message = msg
	} else {
		text := ReplyText(p.tokens)
		c.Text = &text
	}
	rep.Choices = []choice{c}
	if p.usage {
		rep.Usage = p.usageObj()
	}
	if p.timings {
		rep.Timings = p.timingsObj()
	}
	writeJSON(w, http.StatusOK, rep)
	s.count(p)
}

func (p *plan) call(id, args string, index *int) toolCall {
	tc := toolCall{Index: index, ID: "call_" + id, Type: "function"}
	tc.Function.Name, tc.Function.Arguments = p.tool, args
	return tc
}

func (s *Server) count(p plan) {
	s.promptTokens.Add(int64(p.prompt))
	s.completionTokens.Add(int64(p.tokens))
	s.completed.Add(1)
	if p.usage {
		s.reported.Add(1)
	}
}

// stream writes SSE chunks the way vLLM does: a role chunk, one chunk per
// token, a chunk with finish_reason, the usage chunk when asked, [DONE].
func (s *Server) stream(w http.ResponseWriter, r *http.Request, base reply, p plan) {
	w.Header().Set("Content-Type", "text/event-stream; charset=utf-8")
	w.Header().Set("Cache-Control", "no-cache")
	w.WriteHeader(http.StatusOK)
	rc := http.NewResponseController(w)
	send := func(rep reply) bool {
		b, _ := json.Marshal(rep)
		if _, err := fmt.Fprintf(w, "data: %s\n\n", b); err != nil {
			return false
		}
		return rc.Flush() == nil
	}
	chunk := func(c choice) reply {
		rep := base
		if base.Object == "chat.completion" {
			rep.Object = "chat.completion.chunk"
		}
		rep.Choices = []choice{c}
		return rep
	}
	if p.chat {
		empty := ""
		if !send(chunk(choice{Delta: &message{Role: "assistant", Content: &empty}})) {
			return
		}
	}
	n := p.tokens
	var args []string
	if p.tool != "" {
		half := len(p.args) / 2
		args = []string{"", p.args[:half], p.args[half:]}
		n = len(args)
	}
	text := ReplyText(p.tokens)
	pos := 0
	for i := range n {
		switch {
		case p.failAfter != nil && i == *p.failAfter:
			cut(w)
			return
		case p.errorAfter != nil && i == *p.errorAfter:
			b, _ := json.Marshal(map[string]any{"error": errorBody(http.StatusInternalServerError, p.errorMessage, "")})
			fmt.Fprintf(w, "data: %s\n\ndata: [DONE]\n\n", b)
			return
		case p.hangAfter != nil && i == *p.hangAfter:
			rc.Flush() //nolint:errcheck
			s.hang(r.Context())
			return
		}
		if !s.sleep(r.Context(), p.delay) {
			return
		}
		var c choice
		switch {
		case p.tool != "":
			idx := 0
			tc := toolCall{Index: &idx}
			if i == 0 {
				tc = p.call(base.ID, "", &idx)
			}
			tc.Function.Arguments = args[i]
			c.Delta = &message{ToolCalls: []toolCall{tc}}
		case p.chat:
			word := text[pos : pos+len(tokenWords[i%len(tokenWords)])]
			if i < p.reasoning {
				c.Delta = &message{ReasoningContent: &word}
			} else {
				c.Delta = &message{Content: &word}
			}
		default:
			word := text[pos : pos+len(tokenWords[i%len(tokenWords)])]
			c.Text = &word
		}
		if p.tool == "" {
			pos += len(tokenWords[i%len(tokenWords)])
		}
		if !send(chunk(c)) {
			return
		}
	}
	if p.failAfter != nil && *p.failAfter >= n {
		cut(w)
		return
	}
	finish := p.finish
	last := choice{FinishReason: &finish}
	if p.chat {
		last.Delta = &message{}
	} else {
		empty := ""
		last.Text = &empty
	}
	rep := chunk(last)
	if p.timings {
		rep.Timings = p.timingsObj()
	}
	if !send(rep) {
		return
	}
	if p.streamUsage {
		rep := base
		if base.Object == "chat.completion" {
			rep.Object = "chat.completion.chunk"
		}
		rep.Choices = []choice{}
		rep.Usage = p.usageObj()
		if !send(rep) {
			return
		}
	}
	if _, err := io.WriteString(w, "data: [DONE]\n\n"); err != nil {
		return
	}
	rc.Flush() //nolint:errcheck
	if !p.streamUsage && !p.timings {
		p.usage = false // nothing went on the wire
	}
	s.count(p)
}
