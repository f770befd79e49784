package ollamatest

import (
	"encoding/json"
	"errors"
	"math/rand/v2"
	"net/http"
	"strconv"
	"strings"

	"github.com/droverhq/drover/pkg/jsonw"
)

// Ollama serves its OpenAI-compatible routes by wrapping its own handlers in
// a middleware (middleware/openai.go) that rewrites the request into an
// Ollama one and every write of the response into OpenAI's shape. The fake
// does the same in two halves: requests are decoded and validated here as
// the middleware does, then fed to the /api handlers' building blocks
// (checkThink, checkCaps, acquire, plan, counters) through openaiErrors,
// which rewrites their {"error": msg} answers the way the middleware does.
//
// Wire facts copied from Ollama v0.17.4:
//   - the middleware's own 400s: Content-Type "application/json;
//     charset=utf-8", no trailing newline, type "invalid_request_error";
//   - everything the handler answers with a status other than 200:
//     Content-Type "application/json", a trailing newline, and type
//     "api_error" whatever the status (the middleware always builds the
//     error for 500), e.g. 404 {"error":{"message":"model 'x' not found",
//     "type":"api_error","param":null,"code":null}};
//   - ids are "chatcmpl-N" / "cmpl-N" with N random in [0, 999);
//     system_fingerprint is always "fp_ollama";
//   - streams are text/event-stream, "data: {json}\n\n" per chunk, ending in
//     "data: [DONE]\n\n"; with stream_options.include_usage a last chunk
//     with "choices":[] carries the usage. /v1/completions also puts an
//     all-zero "usage" on every chunk when include_usage is set.
//   - an in-stream error (a fault's error_after_chunks) is not reported:
//     Ollama's middleware turns the {"error":...} line into an empty chunk
//     with "model":"" and the stream ends without [DONE].
//
// Fake-only: the "fake" object (body or X-Fake-Ollama header) may also carry
// "tool_call": true; when the request lists tools, the reply is then a call
// of the first tool with arguments {} (finish_reason "tool_calls").

// openaiFault is the "fake" field on /v1 routes: a Fault plus the reply
// shapes only the OpenAI routes produce.
type openaiFault struct {
	Fault
	ToolCall bool `json:"tool_call,omitempty"`
}

func (f *openaiFault) fault() *Fault {
	if f == nil {
		return nil
	}
	return &f.Fault
}

// serveOpenAI serves Ollama's OpenAI-compatible /v1 routes; it reports
// whether it handled the request (false leaves it to ServeHTTP's 404/405).
func (s *Server) serveOpenAI(w http.ResponseWriter, r *http.Request) bool {
	path, m := r.URL.Path, r.Method
	if !strings.HasPrefix(path, "/v1/") {
		return false
	}
	var serve func(http.ResponseWriter, *http.Request, *openaiFault)
	switch {
	case path == "/v1/chat/completions" && m == http.MethodPost:
		serve = s.handleChatCompletions
	case path == "/v1/completions" && m == http.MethodPost:
		serve = s.handleCompletions
	case path == "/v1/embeddings" && m == http.MethodPost:
		serve = s.handleOpenAIEmbeddings
	case path == "/v1/models" && m == http.MethodGet:
		serve = s.handleListModels
	case path == "/v1/models/" && m == http.MethodGet:
		// gin's RedirectTrailingSlash
		http.Redirect(w, r, "/v1/models", http.StatusMovedPermanently)
		return true
	case strings.HasPrefix(path, "/v1/models/"):
		name := path[len("/v1/models/"):]
		if strings.Contains(name, "/") {
			return false // gin's 404: :model matches one segment
		}
		if m != http.MethodGet {
			w.Header().Set("Content-Type", "text/plain")
			w.Header().Set("Allow", "GET")
			w.WriteHeader(http.StatusMethodNotAllowed)
			w.Write([]byte("405 method not allowed"))
			return true
		}
		serve = func(w http.ResponseWriter, r *http.Request, _ *openaiFault) { s.handleRetrieveModel(w, r, name) }
	default:
		return false
	}
	ew := openaiErrors(w)
	if h := r.Header.Get(FaultHeader); h != "" {
		var f openaiFault
		if err := json.Unmarshal([]byte(h), &f); err == nil {
			if !s.applyFault(ew, r, &f.Fault) {
				return true
			}
			serve(w, r, &f)
			return true
		}
	}
	serve(w, r, nil)
	return true
}

// openaiErrors rewrites the /api handlers' error answers as Ollama's OpenAI
// middleware does. Only validation and setup write through it; replies go to
// the real writer.
func openaiErrors(w http.ResponseWriter) *errorRewriter {
	return &errorRewriter{ResponseWriter: w, body: func(_ int, msg string) []byte {
		if msg == "" { // api.StatusError's fallback text
			msg = "something went wrong, please see the ollama server logs for details"
		}
		return appendOpenAIError(nil, "api_error", msg, true)
	}}
}

func appendOpenAIError(b []byte, typ, msg string, newline bool) []byte {
	b = append(b, `{"error":{"message":`...)
	b = jsonw.AppendString(b, msg)
	b = append(b, `,"type":"`...)
	b = append(b, typ...)
	b = append(b, `","param":null,"code":null}}`...)
	if newline {
		b = append(b, '\n')
	}
	return b
}

// badOpenAIRequest is the middleware's own 400 (gin's AbortWithStatusJSON).
func badOpenAIRequest(w http.ResponseWriter, msg string) {
	writeRaw(w, http.StatusBadRequest, appendOpenAIError(nil, "invalid_request_error", msg, false))
}

// openaiTypeNames maps the fake's request types to the Ollama types that
// gin's binding names in its JSON type errors.
var openaiTypeNames = strings.NewReplacer(
	"field openaiChatRequest.", "field ChatCompletionRequest.",
	"field openaiCompletionRequest.", "field CompletionRequest.",
	"field openaiEmbedRequest.", "field EmbedRequest.",
	"field openaiMessage.", "field Message.",
	"field openaiStreamOptions.", "field StreamOptions.",
	"field openaiResponseFormat.", "field ResponseFormat.",
	"field openaiReasoning.", "field Reasoning.",
	"field openaiTool.", "field Tool.",
	"field openaiToolFunction.", "field ToolFunction.",
	"field openaiToolCall.", "field ToolCall.",
	"ollamatest.openaiMessage", "openai.Message",
	"ollamatest.openaiStreamOptions", "openai.StreamOptions",
	"ollamatest.openaiResponseFormat", "openai.ResponseFormat",
	"ollamatest.openaiReasoning", "openai.Reasoning",
	"ollamatest.openaiToolCall", "openai.ToolCall",
	"ollamatest.openaiToolFunction", "api.ToolFunction",
	"ollamatest.openaiTool", "api.Tool",
	"ollamatest.openaiFault", "ollamatest.Fault",
)

// decodeOpenAI binds a body as the middleware's ShouldBindJSON does,
// answering its 400 on failure.
func decodeOpenAI(w http.ResponseWriter, r *http.Request, v any) bool {
	err := json.NewDecoder(r.Body).Decode(v)
	if err == nil {
		return true
	}
	msg := err.Error()
	var te *json.UnmarshalTypeError
	if errors.As(err, &te) {
		msg = openaiTypeNames.Replace(msg)
	}
	badOpenAIRequest(w, msg)
	return false
}

// openaiID is the middleware's fmt.Sprintf("%s-%d", prefix, rand.Intn(999)),
// JSON-encoded.
func openaiID(prefix string) []byte {
	b := append(append(make([]byte, 0, 16), '"'), prefix...)
	b = strconv.AppendInt(b, int64(rand.IntN(999)), 10)
	return append(b, '"')
}
