package translate

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"sort"
	"strings"
	"time"

	"github.com/droverhq/drover/services/proxy/internal/sse"
)

// maxBuffered bounds a non-streamed answer held for translation.
const maxBuffered = 256 << 20

// Response returns the filter that turns backend's answer to r into
// Ollama's, for a dialect.Exchange's Transform: NDJSON lines for a stream, one
// JSON object otherwise, {"error": message} for an error status. model is
// the name the client asked for; start is when the request arrived (for
// total_duration). It sets h's Content-Type to what Ollama sends.
func Response(r Request, model string, start time.Time, status int, h http.Header, client io.Writer) io.WriteCloser {
	if status >= 400 {
		h.Set("Content-Type", "application/json; charset=utf-8")
		return &buffered{w: client, fn: errorBody}
	}
	o := &ollamaWriter{w: client, r: r, model: model, start: start}
	if r.Stream && (r.Kind == Chat || r.Kind == Generate) {
		h.Set("Content-Type", "application/x-ndjson")
		return &streamed{WriteCloser: sse.EventFilter(client, o.event), o: o}
	}
	h.Set("Content-Type", "application/json; charset=utf-8")
	return &buffered{w: client, fn: o.whole}
}

// buffered holds a whole body and writes fn's translation at Close.
type buffered struct {
	w   io.Writer
	buf bytes.Buffer
	fn  func([]byte) []byte
}

func (b *buffered) Write(p []byte) (int, error) {
	if b.buf.Len()+len(p) > maxBuffered {
		return 0, io.ErrShortBuffer
	}
	return b.buf.Write(p)
}

func (b *buffered) Close() error {
	_, err := b.w.Write(b.fn(b.buf.Bytes()))
	return err
}

// errorBody turns any of the error shapes OpenAI-compatible servers send
// into Ollama's {"error": message}.
func errorBody(body []byte) []byte {
	msg := errorMessage(body)
	if msg == "" {
		msg = strings.TrimSpace(string(body))
	}
	out, _ := json.Marshal(map[string]string{"error": msg})
	return out
}

func errorMessage(body []byte) string {
	var doc struct {
		Error   json.RawMessage `json:"error"`
		Message string          `json:"message"`
		Detail  any             `json:"detail"`
	}
	if json.Unmarshal(body, &doc) != nil {
		return ""
	}
	var s string
	if json.Unmarshal(doc.Error, &s) == nil && s != "" {
		return s
	}
	var obj struct {
		Message string `json:"message"`
	}
	if json.Unmarshal(doc.Error, &obj) == nil && obj.Message != "" {
		return obj.Message
	}
	if doc.Message != "" {
		return doc.Message
	}
	if doc.Detail != nil {
		b, _ := json.Marshal(doc.Detail)
		return string(b)
	}
	return ""
}

// oaToolDelta is a streamed (or whole) OpenAI tool call.
type oaToolDelta struct {
	Index    int    `json:"index"`
	ID       string `json:"id"`
	Function struct {
		Name      string `json:"name"`
		Arguments string `json:"arguments"`
	} `json:"function"`
}

// oaText is a choice's message, or in a stream its delta.
type oaText struct {
	Content          *string       `json:"content"`
	ReasoningContent *string       `json:"reasoning_content"`
	Reasoning        *string       `json:"reasoning"`
	ToolCalls        []oaToolDelta `json:"tool_calls"`
}

// choice reads one choice's text (a completion's, or else its message's or
// delta's content) and reasoning, and collects its tool calls.
func (o *ollamaWriter) choice(completion *string, m *oaText) (text, think string) {
	if completion != nil {
		text = *completion
	}
	if m != nil {
		text, think = str(m.Content), str(m.ReasoningContent)+str(m.Reasoning)
		for _, tc := range m.ToolCalls {
			o.calls.add(tc)
		}
	}
	return text, think
}

// oaReply is a chat or text completion, whole or one chunk of it.
type oaReply struct {
	Choices []struct {
		Index        int     `json:"index"`
		Text         *string `json:"text"`
		Message      *oaText `json:"message"`
		Delta        *oaText `json:"delta"`
		FinishReason *string `json:"finish_reason"`
	} `json:"choices"`
	Usage *struct {
		PromptTokens     *int64 `json:"prompt_tokens"`
		CompletionTokens *int64 `json:"completion_tokens"`
	} `json:"usage"`
	Timings *struct {
		PromptN     *int64  `json:"prompt_n"`
		CacheN      int64   `json:"cache_n"`
		PredictedN  *int64  `json:"predicted_n"`
		PromptMs    float64 `json:"prompt_ms"`
		PredictedMs float64 `json:"predicted_ms"`
	} `json:"timings"`
	Error json.RawMessage `json:"error"`
}

// ollamaWriter translates one response; it is used by one request only.
type ollamaWriter struct {
	w     io.Writer
	r     Request
	model string
	start time.Time
	first time.Time // first content
	// stream state
	calls      callDeltas // by index
	callsSent  bool
	finish     string
	prompt     *int64
	output     *int64
	promptNs   int64
	evalNs     int64
	done, fail bool
}

// event translates one SSE event of a streamed chat or text completion.
func (o *ollamaWriter) event(ev []byte) []byte {
	data := bytes.TrimSpace(sse.EventData(ev))
	if len(data) == 0 || o.done || o.fail {
		return nil
	}
	if bytes.Equal(data, []byte("[DONE]")) {
		return o.final()
	}
	var c oaReply
	if json.Unmarshal(data, &c) != nil {
		return nil
	}
	if len(c.Error) > 0 && !bytes.Equal(c.Error, []byte("null")) {
		o.fail = true
		out, _ := json.Marshal(map[string]string{"error": errorMessage(data)})
		return append(out, '\n')
	}
	o.counts(&c)
	var out []byte
	for _, ch := range c.Choices {
		if ch.Index != 0 {
			continue // Ollama has one choice
		}
		text, think := o.choice(ch.Text, ch.Delta)
		if !o.r.Think {
			think = ""
		}
		if text != "" || think != "" {
			if o.first.IsZero() {
				o.first = time.Now()
			}
			out = append(out, o.chunk(text, think, nil, false)...)
		}
		if ch.FinishReason != nil && *ch.FinishReason != "" {
			o.finish = *ch.FinishReason
			out = append(out, o.sendCalls()...)
		}
	}
	return out
}

// streamed is a translated stream. Its Close ends a stream whose backend
// ended cleanly without [DONE]: with the final chunk when the backend had
// sent its finish_reason, else with Ollama's {"error": ...} line (the
// answer was cut short, and done: true would pass it off as whole).
type streamed struct {
	io.WriteCloser
	o *ollamaWriter
}

// Whole reports whether the stream so far is a whole answer: it reached
// [DONE], or the backend sent its finish_reason and no error (Close then
// ends it normally). The forwarder records the other case as cut short.
func (s *streamed) Whole() bool { return s.o.done || (!s.o.fail && s.o.finish != "") }

func (s *streamed) Close() error {
	if err := s.WriteCloser.Close(); err != nil {
		return err
	}
	if s.o.done || s.o.fail {
		return nil
	}
	if s.o.finish == "" {
		s.o.fail = true
		out, _ := json.Marshal(map[string]string{"error": TruncatedMessage})
		_, err := s.o.w.Write(append(out, '\n'))
		return err
	}
	_, err := s.o.w.Write(s.o.final())
	return err
}

// callDeltas gathers a stream's tool-call deltas by index: the id comes
// once, the name and the arguments in pieces.
type callDeltas []*oaToolDelta

// maxToolCalls bounds a tool call's index: a backend's -1 once panicked
// the filter, and 1e9 would make a billion-entry slice. A delta outside
// [0, maxToolCalls) is dropped.
const maxToolCalls = 1024

func (cs *callDeltas) add(td oaToolDelta) {
	if td.Index < 0 || td.Index >= maxToolCalls {
		return
	}
	for len(*cs) <= td.Index {
		*cs = append(*cs, nil)
	}
	c := (*cs)[td.Index]
	if c == nil {
		c = &oaToolDelta{Index: td.Index}
		(*cs)[td.Index] = c
	}
	if td.ID != "" {
		c.ID = td.ID
	}
	c.Function.Name += td.Function.Name
	c.Function.Arguments += td.Function.Arguments
}

func (o *ollamaWriter) sendCalls() []byte {
	if o.callsSent || len(o.calls) == 0 {
		return nil
	}
	o.callsSent = true
	return o.chunk("", "", toolCalls(o.calls), false)
}

// final is the done chunk, with counts when the backend reported them.
func (o *ollamaWriter) final() []byte {
	o.done = true
	out := o.sendCalls()
	return append(out, o.chunk("", "", nil, true)...)
}

func (o *ollamaWriter) counts(c *oaReply) {
	if u := c.Usage; u != nil && u.PromptTokens != nil {
		o.prompt, o.output = u.PromptTokens, u.CompletionTokens
		if o.output == nil {
			zero := int64(0)
			o.output = &zero
		}
	}
	if t := c.Timings; t != nil {
		if o.prompt == nil && t.PromptN != nil {
			p := *t.PromptN + t.CacheN
			o.prompt, o.output = &p, t.PredictedN
		}
		o.promptNs, o.evalNs = int64(t.PromptMs*1e6), int64(t.PredictedMs*1e6)
	}
}

// toolCalls converts accumulated OpenAI calls: arguments become an object.
func toolCalls(calls []*oaToolDelta) []toolCall {
	var out []toolCall
	for _, c := range calls {
		if c == nil {
			continue
		}
		var tc toolCall
		tc.ID = c.ID
		tc.Function.Index, tc.Function.Name = c.Index, c.Function.Name
		args := json.RawMessage(strings.TrimSpace(c.Function.Arguments))
		var obj map[string]json.RawMessage
		if len(args) == 0 || json.Unmarshal(args, &obj) != nil {
			args = json.RawMessage("{}") // not an object: Ollama's clients could not read it
		}
		tc.Function.Arguments = args
		out = append(out, tc)
	}
	return out
}

// ollamaChunk is Ollama's chat or generate response, in Ollama's field order.
type ollamaChunk struct {
	Model              string   `json:"model"`
	CreatedAt          string   `json:"created_at"`
	Message            *message `json:"message,omitempty"`
	Response           *string  `json:"response,omitempty"`
	Thinking           string   `json:"thinking,omitempty"`
	DoneReason         string   `json:"done_reason,omitempty"`
	Done               bool     `json:"done"`
	TotalDuration      int64    `json:"total_duration,omitempty"`
	LoadDuration       int64    `json:"load_duration,omitempty"`
	PromptEvalCount    *int64   `json:"prompt_eval_count,omitempty"`
	PromptEvalDuration int64    `json:"prompt_eval_duration,omitempty"`
	EvalCount          *int64   `json:"eval_count,omitempty"`
	EvalDuration       int64    `json:"eval_duration,omitempty"`
}

// chunk renders one Ollama response line (NDJSON when streaming).
func (o *ollamaWriter) chunk(text, think string, calls []toolCall, done bool) []byte {
	now := time.Now()
	c := ollamaChunk{Model: o.model, CreatedAt: now.UTC().Format(time.RFC3339Nano), Done: done}
	if o.r.Kind == Chat {
		c.Message = &message{Role: "assistant", Content: text, Thinking: think, ToolCalls: calls}
	} else {
		c.Response, c.Thinking = &text, think
	}
	if done {
		c.DoneReason = doneReason(o.finish)
		c.TotalDuration = now.Sub(o.start).Nanoseconds()
		c.PromptEvalCount, c.EvalCount = o.prompt, o.output
		c.PromptEvalDuration, c.EvalDuration = o.promptNs, o.evalNs
		if c.PromptEvalDuration == 0 && c.EvalDuration == 0 && !o.first.IsZero() {
			c.PromptEvalDuration, c.EvalDuration = o.first.Sub(o.start).Nanoseconds(), now.Sub(o.first).Nanoseconds()
		}
	}
	b, _ := json.Marshal(c)
	if o.r.Stream {
		b = append(b, '\n')
	}
	return b
}

// doneReason maps OpenAI's finish_reason to Ollama's done_reason.
func doneReason(finish string) string {
	switch finish {
	case "length":
		return "length"
	default:
		return "stop"
	}
}

// whole translates a non-streamed answer.
func (o *ollamaWriter) whole(body []byte) []byte {
	switch o.r.Kind {
	case Embed, Embeddings:
		return o.embeddings(body)
	}
	var c oaReply
	if err := json.Unmarshal(body, &c); err != nil {
		out, _ := json.Marshal(map[string]string{"error": "invalid response from backend: " + err.Error()})
		return out
	}
	o.counts(&c)
	var text, think string
	for _, ch := range c.Choices {
		if ch.Index != 0 {
			continue
		}
		text, think = o.choice(ch.Text, ch.Message)
		if ch.FinishReason != nil {
			o.finish = *ch.FinishReason
		}
	}
	if !o.r.Think {
		think = ""
	}
	o.done = true
	now := time.Now()
	o.first = now
	c2 := o.chunk(text, think, toolCalls(o.calls), true)
	return c2
}

// embeddings translates /v1/embeddings into /api/embed's or the legacy
// /api/embeddings' answer, every vector in input order.
func (o *ollamaWriter) embeddings(body []byte) []byte {
	var doc struct {
		Data []struct {
			Index     int             `json:"index"`
			Embedding json.RawMessage `json:"embedding"`
		} `json:"data"`
		Usage *struct {
			PromptTokens *int64 `json:"prompt_tokens"`
		} `json:"usage"`
	}
	if err := json.Unmarshal(body, &doc); err != nil {
		out, _ := json.Marshal(map[string]string{"error": "invalid response from backend: " + err.Error()})
		return out
	}
	sort.SliceStable(doc.Data, func(i, j int) bool { return doc.Data[i].Index < doc.Data[j].Index })
	vecs := make([]json.RawMessage, len(doc.Data))
	for i, d := range doc.Data {
		vecs[i] = d.Embedding
	}
	if o.r.Kind == Embeddings {
		v := json.RawMessage("[]")
		if len(vecs) > 0 {
			v = vecs[0]
		}
		out, _ := json.Marshal(map[string]json.RawMessage{"embedding": v})
		return out
	}
	out := struct {
		Model           string            `json:"model"`
		Embeddings      []json.RawMessage `json:"embeddings"`
		TotalDuration   int64             `json:"total_duration,omitempty"`
		LoadDuration    int64             `json:"load_duration,omitempty"`
		PromptEvalCount *int64            `json:"prompt_eval_count,omitempty"`
	}{Model: o.model, Embeddings: vecs, TotalDuration: time.Since(o.start).Nanoseconds()}
	if doc.Usage != nil {
		out.PromptEvalCount = doc.Usage.PromptTokens
	}
	b, _ := json.Marshal(out)
	return b
}

func str(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}
