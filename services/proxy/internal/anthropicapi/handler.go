package anthropicapi

import (
	"bytes"
	"encoding/json"
	"log/slog"
	"net/http"

	"github.com/go-chi/chi/v5"

	"github.com/droverhq/drover/services/proxy/internal/auth"
	"github.com/droverhq/drover/services/proxy/internal/forward"
)

// Handler serves /v1/messages.
type Handler struct {
	Forward *forward.Forwarder
	Log     *slog.Logger
}

// Routes mounts the Messages API on r.
func (h *Handler) Routes(r chi.Router) {
	r.Post(Route, h.messages)
}

// MessagesRequest is the part of a request Drover checks before routing,
// the checks and their order those of Ollama's middleware (so that an
// unknown model with a broken body gets the same 400 from Drover as from
// Ollama). The type keeps Ollama's name, which encoding/json puts in type
// errors. Everything else goes to the backend as the client sent it.
type MessagesRequest struct {
	Model     string    `json:"model"`
	MaxTokens int       `json:"max_tokens"`
	Messages  []counted `json:"messages"`
	Stream    bool      `json:"stream,omitempty"`
}

// counted is a message, counted but not copied: a body may be
// server.max_body_bytes, and a copy of its messages would double what the
// request costs.
type counted struct{}

func (*counted) UnmarshalJSON([]byte) error { return nil }

// decode reads body as gin's ShouldBindJSON does, with a json.Decoder (an
// empty body is "EOF", trailing data is ignored), but first with
// json.Unmarshal, which gives the same result for a well-formed body
// without the Decoder's copy of it.
func decode(body []byte, req *MessagesRequest) error {
	if json.Unmarshal(body, req) == nil {
		return nil
	}
	*req = MessagesRequest{}
	return json.NewDecoder(bytes.NewReader(body)).Decode(req)
}

func (h *Handler) messages(w http.ResponseWriter, r *http.Request) {
	body, ok := forward.ReadBody(w, r, WriteError)
	if !ok {
		return
	}
	var req MessagesRequest
	switch err := decode(body, &req); {
	case err != nil:
		badRequest(w, err.Error())
		return
	case req.Model == "":
		badRequest(w, "model is required")
		return
	case req.MaxTokens <= 0:
		badRequest(w, "max_tokens is required and must be positive")
		return
	case len(req.Messages) == 0:
		badRequest(w, "messages is required")
		return
	}
	h.Forward.Serve(w, r, &forward.Request{
		Route:  Route,
		Method: http.MethodPost,
		Body:   body,
		Model:  req.Model,
		Stream: req.Stream,
		APIKey: auth.KeyID(r.Context()),
		Error:  WriteError,
	})
}
