package ollama

import (
	"bytes"

	"github.com/droverhq/drover/services/proxy/internal/dialect"
	"github.com/droverhq/drover/services/proxy/internal/meter"
)

// MessagesRoute is Anthropic's Messages API, which Ollama serves (its
// middleware turns the request into a chat and every chat chunk back into
// Anthropic's events). Drover passes it through as it is.
const MessagesRoute = "/v1/messages"

// messages is the exchange for MessagesRoute: the body as the client sent
// it (the model renamed for an alias), the answer passed through untouched.
func messages(c dialect.Call) (dialect.Exchange, error) {
	x, err := dialect.Pass(c)
	x.Tokens = countMessage
	if c.Stream {
		x.Tokens, x.Complete = countMessageStream, messageStopped
	}
	return x, err
}

// Where Anthropic's Messages API reports tokens: "usage" at the end of a
// whole message ({"input_tokens","output_tokens"}); in a stream, the
// message_start event's message.usage.input_tokens and the message_delta
// event's usage.output_tokens (cumulative). Ollama's message_start carries
// only an estimate (characters/4) and puts the real prompt_eval_count in
// message_delta's usage.input_tokens, so the last input_tokens seen is the
// count: message_delta's when it has one, else message_start's while it is
// still in the meter's tail.

// countMessage reads a non-streamed message's usage.
func countMessage(m *meter.Meter) (in, out *int64) {
	i, iok := m.Count("input_tokens")
	o, ook := m.Count("output_tokens")
	if !iok || !ook {
		return nil, nil
	}
	return &i, &o
}

// countMessageStream reads a stream's counts once it reached message_delta;
// before it the output count is not known.
func countMessageStream(m *meter.Meter) (in, out *int64) {
	if !bytes.Contains(m.Tail(), []byte(`"type":"message_delta"`)) {
		return nil, nil
	}
	o, ok := m.Count("output_tokens")
	if !ok {
		return nil, nil
	}
	if i, ok := m.Count("input_tokens"); ok {
		return &i, &o
	}
	return nil, &o
}

// messageStopped reports a stream that reached its message_stop event: a
// client hanging up after it missed nothing.
func messageStopped(m *meter.Meter) bool {
	return bytes.Contains(m.Tail(), []byte("event: message_stop"))
}
