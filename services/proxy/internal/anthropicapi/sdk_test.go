package anthropicapi_test

import (
	"context"
	"testing"
	"time"

	"github.com/anthropics/anthropic-sdk-go/v2"
	"github.com/anthropics/anthropic-sdk-go/v2/option"

	"github.com/droverhq/drover/pkg/config"
	"github.com/droverhq/drover/testkit/ollamatest"
)

// The official Anthropic Go SDK against Drover in front of the fake, its key
// sent as x-api-key: a message, a stream accumulated into a message, and a
// tool call, each with the backend's counts.
func TestAnthropicSDK(t *testing.T) {
	e := newEnv(t, false, func(c *config.Config) {
		c.Auth.Keys = []config.APIKey{{ID: "team-a", Key: "secret-a"}}
	})
	client := anthropic.NewClient(option.WithBaseURL(e.url), option.WithAPIKey("secret-a"), option.WithMaxRetries(0))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	params := anthropic.MessageNewParams{
		Model:     "tiny",
		MaxTokens: 5,
		Messages:  []anthropic.MessageParam{anthropic.NewUserMessage(anthropic.NewTextBlock("say three words"))},
	}

	msg, err := client.Messages.New(ctx, params)
	if err != nil {
		t.Fatal(err)
	}
	if len(msg.Content) != 1 || msg.Content[0].AsText().Text != ollamatest.ReplyText(5) || msg.StopReason != anthropic.StopReasonMaxTokens ||
		msg.Usage.InputTokens != prompt || msg.Usage.OutputTokens != 5 {
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
	if len(acc.Content) != 1 || acc.Content[0].AsText().Text != ollamatest.ReplyText(5) || acc.StopReason != anthropic.StopReasonMaxTokens || acc.Usage.OutputTokens != 5 {
		t.Fatalf("stream: %+v", acc)
	}

	tools := params
	tools.Model = "tiny2" // the fake's model with the tools capability
	tools.Tools = []anthropic.ToolUnionParam{anthropic.ToolUnionParamOfTool(anthropic.ToolInputSchemaParam{Properties: map[string]any{}}, "get_weather")}
	call, err := client.Messages.New(ctx, tools, option.WithHeader(ollamatest.FaultHeader, `{"tool_call":true}`))
	if err != nil {
		t.Fatal(err)
	}
	if len(call.Content) != 1 || call.Content[0].AsToolUse().Name != "get_weather" || call.StopReason != anthropic.StopReasonToolUse {
		t.Fatalf("tool use: %s", call.RawJSON())
	}

	// Each of the three was counted as the backend reported it, for the key.
	for i, want := range [][2]int64{{prompt, 5}, {prompt, 5}, {prompt, 5}} {
		ev := e.event(i + 1)
		if ev.APIKey != "team-a" || ev.Error || *ev.InputTokens != want[0] || *ev.OutputTokens != want[1] {
			t.Errorf("event %d: %+v", i+1, ev)
		}
	}
	if c := e.fake.Counters(); c.PromptEvalCount != 3*prompt || c.EvalCount != 15 {
		t.Errorf("the backend counted %d in, %d out", c.PromptEvalCount, c.EvalCount)
	}
}
