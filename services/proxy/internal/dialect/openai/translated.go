package openai

import (
	"io"
	"net/http"
	"time"

	"github.com/droverhq/drover/services/proxy/internal/dialect"
	"github.com/droverhq/drover/services/proxy/internal/translate"
)

// translators turn each Ollama inference route into an OpenAI request.
var translators = map[string]func(body []byte, model string) (translate.Request, error){
	"/api/chat":       translate.ChatRequest,
	"/api/generate":   translate.GenerateRequest,
	"/api/embed":      translate.EmbedRequest,
	"/api/embeddings": translate.EmbeddingsRequest,
}

// translated is the exchange for an Ollama route: the request translated
// to OpenAI's terms, the answer translated back to Ollama's and counted in
// OpenAI's terms.
func translated(request func([]byte, string) (translate.Request, error), c dialect.Call) (dialect.Exchange, error) {
	tr, err := request(c.Body, c.Target)
	if err != nil {
		return dialect.Exchange{}, err
	}
	t := &translation{req: tr, model: c.Model, start: c.Start}
	x := dialect.Exchange{Path: tr.Path, Body: tr.Body, Transform: t.response, Tokens: countWhole}
	if tr.Stream {
		x.Tokens, x.Complete = countStream, streamDone
	}
	return x, nil
}

// translation is what one attempt's answer is translated against.
type translation struct {
	req   translate.Request
	model string    // as the client named it
	start time.Time // for Ollama's total_duration
}

func (t *translation) response(status int, h http.Header, client io.Writer) io.WriteCloser {
	return translate.Response(t.req, t.model, t.start, status, h, client)
}
