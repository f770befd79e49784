package ollamatest

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/droverhq/drover/pkg/jsonw"
)

// Request bodies of /v1/chat/completions and /v1/completions: the fields of
// Ollama's openai.ChatCompletionRequest and openai.CompletionRequest with
// the same Go types, so that type errors read the same (see
// openaiTypeNames); only the fields marked below are acted on.

type openaiChatRequest struct {
	Model            string                `json:"model"`    // used
	Messages         []openaiMessage       `json:"messages"` // used
	Stream           bool                  `json:"stream"`   // used
	StreamOptions    *openaiStreamOptions  `json:"stream_options"`
	MaxTokens        *int                  `json:"max_tokens"` // used
	Seed             *int                  `json:"seed"`
	Stop             any                   `json:"stop"`
	Temperature      *float64              `json:"temperature"`
	FrequencyPenalty *float64              `json:"frequency_penalty"`
	PresencePenalty  *float64              `json:"presence_penalty"`
	TopP             *float64              `json:"top_p"`
	ResponseFormat   *openaiResponseFormat `json:"response_format"`
	Tools            []openaiTool          `json:"tools"`            // used
	Reasoning        *openaiReasoning      `json:"reasoning"`        // used
	ReasoningEffort  *string               `json:"reasoning_effort"` // used
	Logprobs         *bool                 `json:"logprobs"`
	TopLogprobs      int                   `json:"top_logprobs"`
	Fake             *openaiFault          `json:"fake"`
}

type openaiMessage struct {
	Role       string           `json:"role"`
	Content    any              `json:"content"`
	Reasoning  string           `json:"reasoning"`
	ToolCalls  []openaiToolCall `json:"tool_calls"`
	Name       string           `json:"name"`
	ToolCallID string           `json:"tool_call_id"`
}

type openaiToolCall struct {
	ID       string `json:"id"`
	Index    int    `json:"index"`
	Type     string `json:"type"`
	Function struct {
		Name      string `json:"name"`
		Arguments string `json:"arguments"`
	} `json:"function"`
}

type openaiTool struct {
	Type     string             `json:"type"`
	Function openaiToolFunction `json:"function"`
}

type openaiToolFunction struct {
	Name string `json:"name"`
}

type openaiStreamOptions struct {
	IncludeUsage bool `json:"include_usage"`
}

type openaiResponseFormat struct {
	Type       string          `json:"type"`
	JSONSchema json.RawMessage `json:"json_schema"`
}

type openaiReasoning struct {
	Effort string `json:"effort"`
}

type openaiCompletionRequest struct {
	Model            string               `json:"model"`  // used
	Prompt           string               `json:"prompt"` // used
	FrequencyPenalty float32              `json:"frequency_penalty"`
	MaxTokens        *int                 `json:"max_tokens"` // used
	PresencePenalty  float32              `json:"presence_penalty"`
	Seed             *int                 `json:"seed"`
	Stop             any                  `json:"stop"` // validated
	Stream           bool                 `json:"stream"`
	StreamOptions    *openaiStreamOptions `json:"stream_options"`
	Temperature      *float32             `json:"temperature"`
	TopP             float32              `json:"top_p"`
	Suffix           string               `json:"suffix"` // used
	Logprobs         *int                 `json:"logprobs"`
	Fake             *openaiFault         `json:"fake"`
}

func (o *openaiStreamOptions) includeUsage() bool { return o != nil && o.IncludeUsage }

func maxTokens(n *int) *options {
	if n == nil {
		return nil
	}
	return &options{NumPredict: float64(*n)}
}

// pickFault is the fault that shapes the reply: the body's, else the
// header's (whose up-front parts serveOpenAI has already applied).
func pickFault(header, body *openaiFault) *openaiFault {
	if body != nil {
		return body
	}
	return header
}

func (s *Server) handleChatCompletions(w http.ResponseWriter, r *http.Request, hf *openaiFault) {
	start := time.Now()
	var req openaiChatRequest
	if !decodeOpenAI(w, r, &req) {
		return
	}
	ew := openaiErrors(w)
	if !s.applyFault(ew, r, req.Fake.fault()) {
		return
	}
	if len(req.Messages) == 0 {
		badOpenAIRequest(w, "[] is too short - 'messages'")
		return
	}
	ph := newPromptHash()
	prompt, err := openaiPromptTokens(req.Messages, ph)
	if err != nil {
		badOpenAIRequest(w, err.Error())
		return
	}
	var think *thinkValue
	effort := ""
	if req.Reasoning != nil {
		effort = req.Reasoning.Effort
	} else if req.ReasoningEffort != nil {
		effort = *req.ReasoningEffort
	}
	switch effort {
	case "":
	case "none":
		think = &thinkValue{set: true}
	case "high", "medium", "low":
		think = &thinkValue{set: true, on: true, isString: true, s: effort}
	default:
		badOpenAIRequest(w, fmt.Sprintf(`invalid reasoning value: '%s' (must be "high", "medium", "low", or "none")`, effort))
		return
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
	thinking := s.checkThink(ew, e, req.Model, think)
	if thinking < 0 {
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
	j := &openaiJob{
		job: job{kind: kindChat, e: e, model: jsonw.AppendString(nil, req.Model), stream: req.Stream,
			keepAlive: s.cfg.KeepAlive, start: start,
			plan: s.makePlan(prompt, maxTokens(req.MaxTokens), f.fault(), thinking > 0), prompt: ph},
		id: openaiID("chatcmpl-"), usage: req.StreamOptions.includeUsage(),
	}
	if f != nil && f.ToolCall && len(req.Tools) > 0 && j.plan.chunks > j.plan.thinking {
		j.tool = req.Tools[0].Function.Name
	}
	s.runOpenAI(w, ew, r, j)
}

// openaiPromptTokens converts messages as openai.FromChatRequest does
// (a content array becomes one message per part) and counts them with the
// fake's rule, feeding ph the same tokens; its errors are the middleware's 400s.
func openaiPromptTokens(msgs []openaiMessage, ph *promptHash) (int, error) {
	tokens, converted := 0, 0
	for _, m := range msgs {
		switch content := m.Content.(type) {
		case string:
			if err := checkToolCalls(m.ToolCalls); err != nil {
				return 0, err
			}
			tokens += countWords(content) + PerMessageTokens
			ph.message(m.Role, content)
			converted++
		case []any:
			for _, c := range content {
				part, ok := c.(map[string]any)
				if !ok {
					return 0, errors.New("invalid message format")
				}
				switch part["type"] {
				case "text":
					text, ok := part["text"].(string)
					if !ok {
						return 0, errors.New("invalid message format")
					}
					tokens += countWords(text) + PerMessageTokens
					ph.message(m.Role, text)
				case "image_url":
					if err := checkImagePart(part); err != nil {
						return 0, err
					}
					tokens += PerMessageTokens
					ph.marker(m.Role + " image " + imageURL(part))
				default:
					return 0, errors.New("invalid message format")
				}
				converted++
			}
			if converted > 0 && len(m.ToolCalls) > 0 {
				if err := checkToolCalls(m.ToolCalls); err != nil {
					return 0, err
				}
			}
		default:
			if m.ToolCalls == nil {
				return 0, fmt.Errorf("invalid message content type: %T", content)
			}
			if err := checkToolCalls(m.ToolCalls); err != nil {
				return 0, err
			}
			tokens += PerMessageTokens
			ph.marker(m.Role + " tools " + toolCallsText(m.ToolCalls))
			converted++
		}
	}
	return tokens, nil
}

func checkToolCalls(calls []openaiToolCall) error {
	for _, tc := range calls {
		var args map[string]any
		if json.Unmarshal([]byte(tc.Function.Arguments), &args) != nil {
			return errors.New("invalid tool call arguments")
		}
	}
	return nil
}

// checkImagePart validates an image_url part as openai.decodeImageURL does.
func checkImagePart(part map[string]any) error {
	var url string
	var ok bool
	if m, isMap := part["image_url"].(map[string]any); isMap {
		url, ok = m["url"].(string)
	} else {
		url, ok = part["image_url"].(string)
	}
	if !ok {
		return errors.New("invalid message format")
	}
	if strings.HasPrefix(url, "http://") || strings.HasPrefix(url, "https://") {
		return errors.New("image URLs are not currently supported, please use base64 encoded data instead")
	}
	data, found := strings.CutPrefix(url, "data:;base64,")
	for _, t := range []string{"jpeg", "jpg", "png", "webp"} {
		if found {
			break
		}
		data, found = strings.CutPrefix(url, "data:image/"+t+";base64,")
	}
	if !found {
		return errors.New("invalid image input")
	}
	if _, err := base64.StdEncoding.DecodeString(data); err != nil {
		return errors.New("invalid image input")
	}
	return nil
}

func (s *Server) handleCompletions(w http.ResponseWriter, r *http.Request, hf *openaiFault) {
	start := time.Now()
	var req openaiCompletionRequest
	if !decodeOpenAI(w, r, &req) {
		return
	}
	ew := openaiErrors(w)
	if !s.applyFault(ew, r, req.Fake.fault()) {
		return
	}
	if stops, ok := req.Stop.([]any); ok {
		for _, v := range stops {
			if _, ok := v.(string); !ok {
				badOpenAIRequest(w, fmt.Sprintf("invalid type for 'stop' field: %T", v))
				return
			}
		}
	}

	// From here on Ollama's GenerateHandler answers, through the middleware.
	if s.serverFailure(ew) {
		return
	}
	var e *entry
	if parseName(req.Model).valid() {
		e = s.lookup(req.Model)
	}
	if e == nil {
		writeError(ew, http.StatusNotFound, fmt.Sprintf("model '%s' not found", req.Model))
		return
	}
	thinking := s.checkThink(ew, e, req.Model, nil)
	want := []Capability{CapCompletion}
	if req.Suffix != "" {
		want = append(want, CapInsert)
	}
	if !s.checkCaps(ew, e, req.Model, "generate", want) {
		return
	}
	prompt := countWords(req.Prompt) + countWords(req.Suffix) + PerMessageTokens
	s.runOpenAI(w, ew, r, &openaiJob{
		job: job{kind: kindGenerate, e: e, model: jsonw.AppendString(nil, req.Model), stream: req.Stream,
			keepAlive: s.cfg.KeepAlive, empty: req.Prompt == "", start: start,
			prompt: generatePromptHash("", req.Prompt, req.Suffix),
			plan:   s.makePlan(prompt, maxTokens(req.MaxTokens), pickFault(hf, req.Fake).fault(), thinking > 0)},
		id: openaiID("cmpl-"), usage: req.StreamOptions.includeUsage(),
	})
}
