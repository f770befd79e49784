package openai

import (
	"io"
	"net/http"

	"github.com/droverhq/drover/services/proxy/internal/dialect"
	"github.com/droverhq/drover/services/proxy/internal/translate"
)

// messages is the exchange for Anthropic's /v1/messages: the request
// translated to a chat completion (streams asking for their usage), the
// answer translated back to Anthropic's message or events, and counted in
// OpenAI's terms from the backend's own bytes.
func messages(c dialect.Call) (dialect.Exchange, error) {
	m, err := translate.MessagesRequest(c.Body, c.Target)
	if err != nil {
		return dialect.Exchange{}, err
	}
	model := c.Model
	x := dialect.Exchange{
		Path: m.Path,
		Body: m.Body,
		Transform: func(status int, h http.Header, client io.Writer) io.WriteCloser {
			return translate.MessagesResponse(m, model, status, h, client)
		},
		Tokens: countWhole,
	}
	if m.Stream {
		x.Tokens, x.Complete = countStream, streamDone
	}
	return x, nil
}
