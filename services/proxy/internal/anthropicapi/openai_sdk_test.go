package anthropicapi_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/anthropics/anthropic-sdk-go/v2"
	"github.com/anthropics/anthropic-sdk-go/v2/option"

	"github.com/droverhq/drover/pkg/config"
	"github.com/droverhq/drover/services/proxy/internal/server"
	"github.com/droverhq/drover/testkit/openaitest"
)

// openaiEnv is Drover in front of one fake OpenAI-compatible server only:
// every /v1/messages request is translated.
func openaiEnv(t *testing.T) (*env, *openaitest.Server) {
	t.Helper()
	oa := openaitest.New(openaitest.Config{})
	if err := oa.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(oa.Close)
	cfg := &config.Config{Replica: "test", Backends: []config.Backend{{Name: "v0", URL: oa.URL(), Type: "openai"}}}
	cfg.Routing.ConnectTimeout = time.Second
	loaded, err := config.FromStruct(cfg)
	if err != nil {
		t.Fatal(err)
	}
	e := &env{t: t, events: &recorder{}}
	e.srv = server.New(loaded, slog.New(slog.NewTextHandler(io.Discard, nil)), server.Options{Sink: e.events})
	hs := httptest.NewServer(e.srv.Handler())
	e.url = hs.URL
	t.Cleanup(func() { hs.CloseClientConnections(); hs.Close(); e.srv.Close() })
	return e, oa
}

// The official Anthropic Go SDK against Drover in front of an OpenAI-type
// backend: a message, a stream, a tool use round trip with its result, the
// stop reasons, and token totals equal to what the backend reported.
func TestAnthropicSDKTranslatedToOpenAI(t *testing.T) {
	e, oa := openaiEnv(t)
	client := anthropic.NewClient(option.WithBaseURL(e.url), option.WithAPIKey("unused"), option.WithMaxRetries(0))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	const askPrompt = 3 + openaitest.PerMessageTokens // "say three words", one message
	params := anthropic.MessageNewParams{
		Model:     "tiny",
		MaxTokens: 5,
		Messages:  []anthropic.MessageParam{anthropic.NewUserMessage(anthropic.NewTextBlock("say three words"))},
	}

	msg, err := client.Messages.New(ctx, params)
	if err != nil {
		t.Fatal(err)
	}
	if len(msg.Content) != 1 || msg.Content[0].AsText().Text != openaitest.ReplyText(5) || msg.StopReason != anthropic.StopReasonMaxTokens ||
		msg.Usage.InputTokens != askPrompt || msg.Usage.OutputTokens != 5 || msg.Model != "tiny" || msg.Role != "assistant" {
		t.Fatalf("message: %s", msg.RawJSON())
	}

	stream := client.Messages.NewStreaming(ctx, params)
	var acc anthropic.Message
	events := 0
	for stream.Next() {
		events++
		if err := acc.Accumulate(stream.Current()); err != nil {
			t.Fatal(err)
		}
	}
	if err := stream.Err(); err != nil {
		t.Fatal(err)
	}
	if len(acc.Content) != 1 || acc.Content[0].AsText().Text != openaitest.ReplyText(5) || acc.StopReason != anthropic.StopReasonMaxTokens ||
		acc.Usage.InputTokens != askPrompt || acc.Usage.OutputTokens != 5 || events != 5+5 {
		t.Fatalf("stream (%d events): %s", events, acc.RawJSON())
	}

	// A tool use, streamed, and its result sent back.
	tools := params
	tools.System = []anthropic.TextBlockParam{{Text: "you may call tools"}}
	tools.Tools = []anthropic.ToolUnionParam{anthropic.ToolUnionParamOfTool(anthropic.ToolInputSchemaParam{
		Properties: map[string]any{"city": map[string]any{"type": "string"}, "days": map[string]any{"type": "integer"}},
	}, "get_weather")}
	stream = client.Messages.NewStreaming(ctx, tools)
	var call anthropic.Message
	for stream.Next() {
		if err := call.Accumulate(stream.Current()); err != nil {
			t.Fatal(err)
		}
	}
	if err := stream.Err(); err != nil {
		t.Fatal(err)
	}
	if len(call.Content) != 1 || call.StopReason != anthropic.StopReasonToolUse {
		t.Fatalf("tool use: %s", call.RawJSON())
	}
	use := call.Content[0].AsToolUse()
	if use.Name != "get_weather" || string(use.Input) != `{"city":"fake","days":1}` || use.ID == "" || call.Usage.OutputTokens != openaitest.ToolCallTokens {
		t.Fatalf("tool use: %s", call.RawJSON())
	}

	result := tools
	result.Messages = append(append([]anthropic.MessageParam(nil), tools.Messages...), call.ToParam(),
		anthropic.NewUserMessage(anthropic.NewToolResultBlock(use.ID, "sunny and warm", false)))
	result.ToolChoice = anthropic.ToolChoiceUnionParam{OfNone: &anthropic.ToolChoiceNoneParam{}}
	answer, err := client.Messages.New(ctx, result)
	if err != nil {
		t.Fatal(err)
	}
	if len(answer.Content) != 1 || answer.Content[0].AsText().Text != openaitest.ReplyText(5) || answer.StopReason != anthropic.StopReasonMaxTokens {
		t.Fatalf("after the result: %s", answer.RawJSON())
	}
	// What the backend was sent: the system prompt, the question, the
	// assistant's call, and the result answering it by id.
	sent := string(oa.LastBody("/v1/chat/completions"))
	for _, want := range []string{
		`{"role":"system","content":"you may call tools"}`,
		`"tool_calls":[{"id":"` + use.ID + `","type":"function","function":{"name":"get_weather","arguments":"{\"city\":\"fake\",\"days\":1}"}}]`,
		`{"role":"tool","content":"sunny and warm","tool_call_id":"` + use.ID + `"}`,
		`"tool_choice":"none"`,
	} {
		if !strings.Contains(sent, want) {
			t.Errorf("the backend was sent %s\nwithout %s", sent, want)
		}
	}

	// An error from the backend is Anthropic's, with its type.
	_, err = client.Messages.New(ctx, params, option.WithHeader(openaitest.FaultHeader, `{"status":429,"error":"slow down"}`))
	var apiErr *anthropic.Error
	if !errors.As(err, &apiErr) || apiErr.StatusCode != http.StatusTooManyRequests || !strings.Contains(apiErr.RawJSON(), `"type":"error","error":{"type":"rate_limit_error","message":"slow down"}`) {
		t.Fatalf("error: %v", err)
	}

	// Each answer was counted as the backend reported it, and the totals
	// are the backend's.
	var in, out int64
	for i := 1; i <= 4; i++ {
		ev := e.event(i)
		if ev.Route != "/v1/messages" || ev.Error || ev.Status != 200 || ev.InputTokens == nil || ev.OutputTokens == nil {
			t.Fatalf("event %d: %+v", i, ev)
		}
		in, out = in+*ev.InputTokens, out+*ev.OutputTokens
	}
	if c := oa.Counters(); c.Completed != 4 || c.Reported != 4 || c.PromptTokens != in || c.CompletionTokens != out || out != 5+5+openaitest.ToolCallTokens+5 {
		t.Errorf("the backend counted %+v; Drover %d in, %d out", c, in, out)
	}
	if answer.Usage.InputTokens != *e.event(4).InputTokens {
		t.Errorf("the answer said %d input tokens, the event %d", answer.Usage.InputTokens, *e.event(4).InputTokens)
	}
}

// An image reaches an OpenAI-type backend as a data URL, and a reasoning
// model's reasoning comes back as a thinking block, whole and streamed.
func TestAnthropicSDKImagesAndThinking(t *testing.T) {
	e, oa := openaiEnv(t)
	client := anthropic.NewClient(option.WithBaseURL(e.url), option.WithAPIKey("unused"), option.WithMaxRetries(0))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	params := anthropic.MessageNewParams{
		Model:     "tiny-reason",
		MaxTokens: 6,
		Messages: []anthropic.MessageParam{anthropic.NewUserMessage(
			anthropic.NewTextBlock("what is this"), anthropic.NewImageBlockBase64("image/png", "aGVsbG8="))},
	}
	msg, err := client.Messages.New(ctx, params)
	if err != nil {
		t.Fatal(err)
	}
	sent := string(oa.LastBody("/v1/chat/completions"))
	if !strings.Contains(sent, `"content":[{"type":"text","text":"what is this"},{"type":"image_url","image_url":{"url":"data:image/png;base64,aGVsbG8="}}]`) {
		t.Errorf("the backend was sent %s", sent)
	}
	reply := openaitest.ReplyText(6)
	think, text := reply[:len(openaitest.ReplyText(3))], reply[len(openaitest.ReplyText(3)):]
	if len(msg.Content) != 2 || msg.Content[0].AsThinking().Thinking != think || msg.Content[1].AsText().Text != text || msg.Usage.OutputTokens != 6 {
		t.Fatalf("message: %s", msg.RawJSON())
	}
	stream := client.Messages.NewStreaming(ctx, params)
	var acc anthropic.Message
	for stream.Next() {
		if err := acc.Accumulate(stream.Current()); err != nil {
			t.Fatal(err)
		}
	}
	if err := stream.Err(); err != nil {
		t.Fatal(err)
	}
	if len(acc.Content) != 2 || acc.Content[0].AsThinking().Thinking != think || acc.Content[1].AsText().Text != text || acc.Usage.OutputTokens != 6 {
		t.Fatalf("stream: %s", acc.RawJSON())
	}
	// Thinking turned off: the backend's reasoning is not passed on.
	params.Thinking = anthropic.ThinkingConfigParamUnion{OfDisabled: &anthropic.ThinkingConfigDisabledParam{}}
	off, err := client.Messages.New(ctx, params)
	if err != nil {
		t.Fatal(err)
	}
	if len(off.Content) != 1 || off.Content[0].AsText().Text != text {
		t.Fatalf("thinking off: %s", off.RawJSON())
	}
}
