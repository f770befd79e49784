package server

import (
	"bytes"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"

	"github.com/anthropics/anthropic-sdk-go/v2"
	"github.com/ollama/ollama/api"
	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"
	"github.com/openai/openai-go/v3/responses"

	"github.com/droverhq/drover/pkg/usage"
	"github.com/droverhq/drover/testkit/ollamatest"
)

// Issue 16 §3, answers a backend ends cleanly but short. A stream that ends
// without its dialect's end marker (done:true, data: [DONE], message_stop,
// response.completed) is as cut as a broken one: the client's stream ends
// with its API's error, never its normal end, and the usage is the chunks
// streamed, flagged partial. A non-streamed answer whose body broke off
// (a chunked body cut, or a body whose only end is the connection's close,
// stopped mid-document) is, on a translated route, the route's own 502
// error, not a 200 with half an answer; passed through, the connection is
// aborted.

// Ollama ends a stream whose runner failed without an end marker on its
// OpenAI and Anthropic layers (the middlewares read the {"error"} line as an
// empty chunk; testkit/ollamatest's error_after_chunks does the same), and
// with its {"error"} line on /api: the clients see the error, the usage is
// partial.
func TestShortStreamOllamaBackend(t *testing.T) {
	const fault = `{"error_after_chunks":3,"error":"runner died"}`
	t.Run("/v1/messages", func(t *testing.T) {
		e := newMixedEnv(t, 1, nil, nil)
		stream := anthropicClient(e, ollamatest.FaultHeader, fault).Messages.NewStreaming(ctx(t), anthropicParams)
		var types []string
		for stream.Next() {
			types = append(types, stream.Current().Type)
		}
		var apiErr *anthropic.Error
		if err := stream.Err(); !errors.As(err, &apiErr) || !strings.Contains(err.Error(), cutMessage) || strings.Contains(strings.Join(types, " "), "message_stop") {
			t.Fatalf("short stream: err %v after events %v, want Anthropic's error and no message_stop", err, types)
		}
		checkPartial(t, onlyEvent(t, e), 3)
	})
	t.Run("/v1/chat/completions", func(t *testing.T) {
		e := newMixedEnv(t, 1, nil, nil)
		if !ollamaServesV1(t, e.ollama[0]) {
			t.Skip("the fake does not serve /v1")
		}
		stream := e.oa.Chat.Completions.NewStreaming(ctx(t), openai.ChatCompletionNewParams{
			Model: "tiny", Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage("hi")},
		}, option.WithHeader(ollamatest.FaultHeader, fault))
		content := 0
		for stream.Next() {
			if ch := stream.Current().Choices; len(ch) > 0 && ch[0].Delta.Content != "" {
				content++
			}
		}
		if err := stream.Err(); err == nil || !strings.Contains(err.Error(), cutMessage) || content != 3 {
			t.Fatalf("short stream: err %v after %d chunks, want 3 chunks and the stream's error", err, content)
		}
		checkPartial(t, onlyEvent(t, e), 3)
	})
	t.Run("/v1/responses", func(t *testing.T) {
		e := newMixedEnv(t, 1, nil, nil)
		_, _, body := e.rawHeader("/v1/responses", `{"model":"tiny","input":"hi","stream":true,"fake":`+fault+`}`, "", "")
		events := bytes.Split(bytes.TrimSuffix(body, []byte("\n\n")), []byte("\n\n"))
		last := events[len(events)-1]
		if !bytes.HasPrefix(last, []byte("event: error\ndata: {\"type\":\"error\",\"code\":\"server_error\"")) || !bytes.Contains(last, []byte(cutMessage)) ||
			bytes.Contains(body, []byte("response.completed")) || bytes.Count(body, []byte("event: response.output_text.delta")) != 3 {
			t.Fatalf("short /v1/responses stream\n%s\nwant three deltas, then the Responses API's error event", tail(body))
		}
		checkPartial(t, onlyEvent(t, e), 3)
	})
	t.Run("/api/chat, the backend's own error line", func(t *testing.T) {
		e := newMixedEnv(t, 1, nil, nil)
		_, _, body := e.rawHeader("/api/chat", `{"model":"tiny","messages":[{"role":"user","content":"hi"}],"fake":`+fault+`}`, "", "")
		if !bytes.HasSuffix(body, []byte("{\"error\":\"runner died\"}\n")) || bytes.Count(body, []byte(`"error"`)) != 1 {
			t.Fatalf("short /api/chat stream\n%s\nwant the backend's error line as its one end", tail(body))
		}
		checkPartial(t, onlyEvent(t, e), 3)
	})
}

// The translated streams (Anthropic's and Ollama's clients on an
// OpenAI-type backend whose stream ends after three chunks, no
// finish_reason, no [DONE]), and a Responses stream that ends without
// response.completed: the client's error (TestCutStreamDialectsCleanEnd
// checks the translated clients' side), and partial usage.
func TestShortStreamTranslated(t *testing.T) {
	t.Run("/v1/messages", func(t *testing.T) {
		e := cleanEndEnv(t)
		p := anthropicParams
		p.Model = "gpt-t"
		stream := anthropicClient(e, "X-Unused", "1").Messages.NewStreaming(ctx(t), p)
		for stream.Next() {
		}
		if err := stream.Err(); err == nil || !strings.Contains(err.Error(), cutMessage) {
			t.Fatalf("short stream: err %v, want the stream's error", err)
		}
		checkPartial(t, onlyEvent(t, e), 3)
	})
	t.Run("/api/chat", func(t *testing.T) {
		e := cleanEndEnv(t)
		err := e.ol.Chat(ctx(t), &api.ChatRequest{Model: "gpt-t", Messages: []api.Message{{Role: "user", Content: "hi"}}}, func(api.ChatResponse) error { return nil })
		if err == nil || !strings.Contains(err.Error(), cutMessage) {
			t.Fatalf("short stream: err %v, want the stream's error", err)
		}
		checkPartial(t, onlyEvent(t, e), 3)
	})
	t.Run("/v1/responses", func(t *testing.T) {
		e := responsesEnv(t)
		stream := e.oa.Responses.NewStreaming(ctx(t), responsesParams, option.WithHeader("X-Cut", "clean"))
		var types []string
		var failure responses.ResponseErrorEvent
		for stream.Next() {
			ev := stream.Current()
			types = append(types, ev.Type)
			if ev.Type == "error" {
				failure = ev.AsError()
			}
		}
		if err := stream.Err(); err != nil || len(types) == 0 || types[len(types)-1] != "error" || !strings.Contains(failure.Message, cutMessage) ||
			failure.SequenceNumber != 7 || strings.Contains(strings.Join(types, " "), "response.completed") {
			t.Fatalf("short stream: err %v, events %v, error %s; want the error event (sequence_number 7) last", err, types, failure.RawJSON())
		}
		checkPartial(t, onlyEvent(t, e), 3)
	})
}

// headerTransport sets one header on every request.
type headerTransport struct{ key, value string }

func (h headerTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	r.Header.Set(h.key, h.value)
	return http.DefaultTransport.RoundTrip(r)
}

func cleanEndEnv(t *testing.T) *mixedEnv {
	t.Helper()
	stub := cleanEndBackend(t)
	return openAIStubEnv(t, "stub", stub.URL)
}

// cutPlainBody writes body's head and the part of it before cut (half of
// it when cut is 0) without a Content-Length, then drops the connection:
// "chunked" in a chunked body (the proxy's transport sees an unexpected
// EOF), "close" on a connection whose close ends the body (HTTP/1.1
// without Content-Length or chunking; the transport sees a clean EOF).
func cutPlainBody(w http.ResponseWriter, mode, body string, cut int) {
	if cut == 0 {
		cut = len(body) / 2
	}
	rc := http.NewResponseController(w)
	if mode == "chunked" {
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, body[:cut])
		rc.Flush() //nolint:errcheck // then cut
		panic(http.ErrAbortHandler)
	}
	conn, bw, err := rc.Hijack()
	if err != nil {
		panic(http.ErrAbortHandler)
	}
	bw.WriteString("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n" + body[:cut])
	bw.Flush()
	conn.Close()
}

// cutChatBackend is an OpenAI-type backend serving model gpt-b whose
// non-streamed chat completions are cut as the X-Cut header says
// (cutPlainBody's modes; "usage" is "close" cut inside the usage object,
// after its counts).
func cutChatBackend(t *testing.T) *httptest.Server {
	t.Helper()
	body := `{"id":"x","object":"chat.completion","created":1,"model":"gpt-b","choices":[{"index":0,"message":{"role":"assistant","content":"` +
		strings.Repeat("word ", 400) + `"},"finish_reason":"stop"}],"usage":{"prompt_tokens":5,"completion_tokens":400,"total_tokens":405}}`
	s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/v1/models" {
			io.WriteString(w, `{"object":"list","data":[{"id":"gpt-b","object":"model"}]}`)
			return
		}
		io.Copy(io.Discard, r.Body) //nolint:errcheck // read before answering
		mode := r.Header.Get("X-Cut")
		if mode == "usage" {
			cutPlainBody(w, "close", body, strings.Index(body, `,"total_tokens"`))
			return
		}
		cutPlainBody(w, mode, body, 0)
	}))
	t.Cleanup(s.Close)
	return s
}

func cutChatEnv(t *testing.T) *mixedEnv {
	t.Helper()
	stub := cutChatBackend(t)
	return openAIStubEnv(t, "stub", stub.URL)
}

// checkCutBody checks the one event of a non-streamed answer cut short:
// an error with status, partial exactly when the cut part carried counts.
func checkCutBody(t *testing.T, ev usage.Event, status int, in *int64) {
	t.Helper()
	if !ev.Error || ev.Status != status || ev.Attempts != 1 || ev.Partial != (in != nil) || (in == nil) != (ev.InputTokens == nil) ||
		(in != nil && *ev.InputTokens != *in) {
		t.Fatalf("cut body recorded as %+v (input %v), want error, status %d, input %v, partial %v", ev, ptr(ev.InputTokens), status, ptr(in), in != nil)
	}
}

// A translated non-streamed answer is held whole before it goes out, so a
// cut one is answered with the client API's error: 502 in Ollama's or
// Anthropic's shape, both for a chunked body cut and for a body ended by
// the connection's close in the middle of its JSON.
func TestCutNonStreamTranslated(t *testing.T) {
	for _, mode := range []string{"chunked", "close"} {
		t.Run("/api/chat, "+mode, func(t *testing.T) {
			e := cutChatEnv(t)
			u, _ := url.Parse(e.url)
			ol := api.NewClient(u, &http.Client{Transport: headerTransport{"X-Cut", mode}})
			stream := false
			var got []api.ChatResponse
			err := ol.Chat(ctx(t), &api.ChatRequest{Model: "gpt-b", Stream: &stream, Messages: []api.Message{{Role: "user", Content: "hi"}}}, func(r api.ChatResponse) error {
				got = append(got, r)
				return nil
			})
			var se api.StatusError
			if !errors.As(err, &se) || se.StatusCode != http.StatusBadGateway || !strings.Contains(se.ErrorMessage, "broke off") {
				t.Fatalf("cut answer: %+v, err %T %v; want a 502 {\"error\"}", got, err, err)
			}
			checkCutBody(t, onlyEvent(t, e), http.StatusBadGateway, nil)
		})
		t.Run("/v1/messages, "+mode, func(t *testing.T) {
			e := cutChatEnv(t)
			p := anthropicParams
			p.Model = "gpt-b"
			msg, err := anthropicClient(e, "X-Cut", mode).Messages.New(ctx(t), p)
			var apiErr *anthropic.Error
			if !errors.As(err, &apiErr) || apiErr.StatusCode != http.StatusBadGateway {
				t.Fatalf("cut message: %v, err %T %v; want a 502 in Anthropic's shape", msg, err, err)
			}
			code, h, body := e.rawHeader("/v1/messages", `{"model":"gpt-b","max_tokens":50,"messages":[{"role":"user","content":"hi"}]}`, "X-Cut", mode)
			checkAnthropicError(t, code, h, body)
			for _, ev := range e.events.all() {
				checkCutBody(t, ev, http.StatusBadGateway, nil)
			}
		})
	}
	t.Run("/api/chat, counts before the cut", func(t *testing.T) {
		e := cutChatEnv(t)
		code, _, body := e.rawHeader("/api/chat", `{"model":"gpt-b","stream":false,"messages":[{"role":"user","content":"hi"}]}`, "X-Cut", "usage")
		if code != http.StatusBadGateway || !bytes.HasPrefix(body, []byte(`{"error":"`)) {
			t.Fatalf("cut answer: %d %s, want 502 {\"error\"}", code, body)
		}
		five := int64(5)
		checkCutBody(t, onlyEvent(t, e), http.StatusBadGateway, &five)
	})
}

// Passed through, a plain body goes out as it arrives: one ended by the
// connection's close mid-document cannot become a status any more, and its
// connection is aborted, as for a chunked body cut (TestCutNonStreamDialects).
func TestCutNonStreamPassedThrough(t *testing.T) {
	t.Run("/v1/chat/completions", func(t *testing.T) {
		e := cutChatEnv(t)
		res, err := e.oa.Chat.Completions.New(ctx(t), openai.ChatCompletionNewParams{
			Model: "gpt-b", Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage("hi")},
		}, option.WithHeader("X-Cut", "close"), option.WithMaxRetries(0))
		if err == nil {
			t.Fatalf("a cut body was taken for a whole answer: %s", res.RawJSON())
		}
		checkAborted(t, e, "/v1/chat/completions", `{"model":"gpt-b","messages":[{"role":"user","content":"hi"}]}`)
		for _, ev := range e.events.all() {
			checkCutBody(t, ev, http.StatusOK, nil)
		}
	})
	t.Run("/v1/responses", func(t *testing.T) {
		e := responsesEnv(t)
		res, err := e.oa.Responses.New(ctx(t), responsesParams, option.WithHeader("X-Cut", "close"), option.WithMaxRetries(0))
		if err == nil {
			t.Fatalf("a cut body was taken for a whole response: %s", res.RawJSON())
		}
		checkAborted(t, e, "/v1/responses", `{"model":"gpt-r","input":"hi"}`)
		for _, ev := range e.events.all() {
			checkCutBody(t, ev, http.StatusOK, nil)
		}
	})
}

// checkAborted checks that a raw request whose answer the backend cut on a
// close-delimited connection ends in a broken response, not a whole one.
func checkAborted(t *testing.T, e *mixedEnv, path, body string) {
	t.Helper()
	req, _ := http.NewRequestWithContext(ctx(t), http.MethodPost, e.url+path, strings.NewReader(body))
	req.Header.Set("X-Cut", "close")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return // aborted before the head
	}
	defer resp.Body.Close()
	if b, err := io.ReadAll(resp.Body); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("reading a cut body: %d bytes, err %v; want unexpected EOF", len(b), err)
	}
}
