package server

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"

	"github.com/anthropics/anthropic-sdk-go/v2"
	aoption "github.com/anthropics/anthropic-sdk-go/v2/option"
	"github.com/ollama/ollama/api"
	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"
	"github.com/openai/openai-go/v3/responses"

	"github.com/droverhq/drover/testkit/ollamatest"
	"github.com/droverhq/drover/testkit/openaitest"
)

// Issue 16 §3 for the two dialects beyond Ollama's and OpenAI's chat:
// Anthropic's Messages API (/v1/messages, passed through to Ollama or
// translated for an OpenAI-type backend) and OpenAI's Responses API
// (/v1/responses, passed through). A stream the backend cuts ends with the
// dialect's own error event and never its normal end (message_stop,
// response.completed); a non-streamed answer the backend never finished is
// an error for the client, never a short answer.

const cutMessage = "an error was encountered while running the model"

// anthropicClient is the official Anthropic SDK pointed at e, every request
// carrying the fake backend's fault header.
func anthropicClient(e *mixedEnv, header, fault string) *anthropic.Client {
	c := anthropic.NewClient(aoption.WithBaseURL(e.url), aoption.WithAPIKey("unused"), aoption.WithMaxRetries(0),
		aoption.WithHeader(header, fault))
	return &c
}

var anthropicParams = anthropic.MessageNewParams{
	Model:     "tiny",
	MaxTokens: 50,
	Messages:  []anthropic.MessageParam{anthropic.NewUserMessage(anthropic.NewTextBlock("hi"))},
}

// A /v1/messages stream cut after three content chunks, on an Ollama backend
// (Anthropic's events passed through) and on an OpenAI-type backend (OpenAI's
// chunks translated to Anthropic's events): the SDK's stream ends with the
// error after the three text deltas, the raw stream has event: error and no
// message_delta or message_stop, and the usage is the three chunks, partial.
func TestCutStreamDialectsAnthropic(t *testing.T) {
	for _, c := range []struct {
		name   string
		ollama int
		oai    []openaitest.Config
		header string
	}{
		{"ollama backend", 1, nil, ollamatest.FaultHeader},
		{"openai backend, translated", 0, []openaitest.Config{{Flavor: openaitest.VLLM}}, openaitest.FaultHeader},
	} {
		t.Run(c.name, func(t *testing.T) {
			e := newMixedEnv(t, c.ollama, c.oai, nil)
			stream := anthropicClient(e, c.header, `{"fail_after_chunks":3}`).Messages.NewStreaming(ctx(t), anthropicParams)
			var types []string
			text := 0
			for stream.Next() {
				ev := stream.Current()
				types = append(types, ev.Type)
				if ev.Type == "content_block_delta" && ev.Delta.Text != "" {
					text++
				}
			}
			err := stream.Err()
			var apiErr *anthropic.Error
			if err == nil || !strings.Contains(err.Error(), cutMessage) {
				t.Fatalf("cut stream: err %v after events %v, want the stream's error", err, types)
			}
			if !errors.As(err, &apiErr) || !strings.Contains(apiErr.RawJSON(), `"type":"api_error"`) {
				t.Fatalf("cut stream: err %T %v, want an *anthropic.Error of type api_error", err, err)
			}
			if text != 3 || len(types) == 0 || types[0] != "message_start" {
				t.Fatalf("events %v with %d text deltas, want message_start first and 3 deltas", types, text)
			}
			for _, typ := range types {
				if typ == "message_delta" || typ == "message_stop" {
					t.Fatalf("a cut stream's events %v end like a whole message", types)
				}
			}
			checkPartial(t, onlyEvent(t, e), 3)

			_, _, body := e.rawHeader("/v1/messages", `{"model":"tiny","max_tokens":50,"stream":true,"messages":[{"role":"user","content":"hi"}]}`,
				c.header, `{"fail_after_chunks":2}`)
			checkAnthropicCut(t, body)
		})
	}
}

// checkAnthropicCut checks a cut /v1/messages stream's bytes: whole events,
// the last one Anthropic's error event, no message_stop.
// anthropicErrorBody is Anthropic's error object, in a body or an SSE
// error event.
type anthropicErrorBody struct {
	Type  string `json:"type"`
	Error struct {
		Type    string `json:"type"`
		Message string `json:"message"`
	} `json:"error"`
}

func checkAnthropicCut(t *testing.T, body []byte) {
	t.Helper()
	events := bytes.Split(bytes.TrimSuffix(body, []byte("\n\n")), []byte("\n\n"))
	last := events[len(events)-1]
	name, data, ok := bytes.Cut(last, []byte("\ndata: "))
	var v anthropicErrorBody
	if !ok || string(name) != "event: error" || json.Unmarshal(data, &v) != nil || v.Type != "error" || v.Error.Type != "api_error" ||
		!strings.Contains(v.Error.Message, cutMessage) {
		t.Fatalf("cut /v1/messages stream ends\n%s\nwant event: error with Anthropic's api_error", tail(body))
	}
	if bytes.Contains(body, []byte("message_stop")) || !bytes.HasSuffix(body, []byte("}\n\n")) {
		t.Fatalf("cut /v1/messages stream\n%s\nhas a message_stop or an unfinished event", tail(body))
	}
}

// responsesBackend is an OpenAI-type backend serving model gpt-r on
// /v1/responses with the events Ollama's Responses layer writes, failing as
// the request's X-Cut header says: "stream" writes the opening events and
// three text deltas, then drops the connection; "before" drops it before
// any response; "body" sends the head and half the Response; "clean" is
// "stream" but ends the body properly after the deltas; "chunked" and
// "close" are "body" without a Content-Length, cut in a chunked body or
// on a connection whose close is the body's end (cutPlainBody). The fakes'
// Responses streams have no fault of their own; Drover passes the route
// through whatever the backend's kind, so one backend stands for both.
func responsesBackend(t *testing.T) *httptest.Server {
	t.Helper()
	s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/v1/models":
			io.WriteString(w, `{"object":"list","data":[{"id":"gpt-r","object":"model"}]}`)
			return
		case "/v1/responses":
		default:
			http.NotFound(w, r)
			return
		}
		io.Copy(io.Discard, r.Body) //nolint:errcheck // read before answering
		rc := http.NewResponseController(w)
		switch r.Header.Get("X-Cut") {
		case "before":
			conn, _, err := rc.Hijack()
			if err != nil {
				panic(http.ErrAbortHandler)
			}
			conn.Close()
			return
		case "chunked", "close":
			cutPlainBody(w, r.Header.Get("X-Cut"), `{"id":"resp_1","object":"response","status":"completed","model":"gpt-r","output":[{"type":"message","id":"msg_1","status":"completed","role":"assistant","content":[{"type":"output_text","text":"`+
				strings.Repeat("word ", 400)+`","annotations":[]}]}],"usage":{"input_tokens":5,"output_tokens":400,"total_tokens":405}}`, 0)
			return
		case "body":
			body := `{"id":"resp_1","object":"response","status":"completed","model":"gpt-r","output":[{"type":"message","id":"msg_1","status":"completed","role":"assistant","content":[{"type":"output_text","text":"` +
				strings.Repeat("word ", 400) + `","annotations":[]}]}],"usage":{"input_tokens":5,"output_tokens":400,"total_tokens":405}}`
			w.Header().Set("Content-Type", "application/json")
			w.Header().Set("Content-Length", strconv.Itoa(len(body)))
			io.WriteString(w, body[:len(body)/2])
			rc.Flush() //nolint:errcheck // then cut
			panic(http.ErrAbortHandler)
		}
		w.Header().Set("Content-Type", "text/event-stream")
		seq := 0
		event := func(typ, data string) {
			fmt.Fprintf(w, "event: %s\ndata: {\"type\":%q,\"sequence_number\":%d,%s}\n\n", typ, typ, seq, data)
			seq++
		}
		created := `"response":{"id":"resp_1","object":"response","created_at":1,"status":"in_progress","model":"gpt-r","output":[],"usage":null}`
		event("response.created", created)
		event("response.in_progress", created)
		event("response.output_item.added", `"output_index":0,"item":{"id":"msg_1","type":"message","status":"in_progress","role":"assistant","content":[]}`)
		event("response.content_part.added", `"item_id":"msg_1","output_index":0,"content_index":0,"part":{"type":"output_text","text":"","annotations":[]}`)
		for _, word := range []string{"one ", "two ", "three "} {
			event("response.output_text.delta", `"item_id":"msg_1","output_index":0,"content_index":0,"delta":"`+word+`"`)
		}
		if r.Header.Get("X-Cut") == "clean" {
			return // ends the chunked body properly, with no response.completed
		}
		rc.Flush() //nolint:errcheck // then cut
		panic(http.ErrAbortHandler)
	}))
	t.Cleanup(s.Close)
	return s
}

func responsesEnv(t *testing.T) *mixedEnv {
	t.Helper()
	stub := responsesBackend(t)
	return openAIStubEnv(t, "r", stub.URL)
}

var responsesParams = responses.ResponseNewParams{Model: "gpt-r", Input: responses.ResponseNewParamsInputUnion{OfString: openai.String("hi")}}

// A /v1/responses stream cut after three text deltas: the OpenAI SDK's
// stream delivers the three deltas and then the Responses API's error event
// (the SDK hands an event: error over as an event of type "error", as
// OpenAI's own servers send it), never response.completed; the usage is the
// three deltas, partial.
func TestCutStreamDialectsResponses(t *testing.T) {
	e := responsesEnv(t)
	stream := e.oa.Responses.NewStreaming(ctx(t), responsesParams, option.WithHeader("X-Cut", "stream"))
	var types []string
	var text strings.Builder
	var failure responses.ResponseErrorEvent
	for stream.Next() {
		ev := stream.Current()
		types = append(types, ev.Type)
		switch ev.Type {
		case "response.output_text.delta":
			text.WriteString(ev.Delta)
		case "error":
			failure = ev.AsError()
		}
	}
	if err := stream.Err(); err != nil {
		t.Fatalf("cut stream: the SDK's stream failed (%v) instead of delivering the error event; events %v", err, types)
	}
	// The stub's events are numbered 0 to 6: the error event is the 7th.
	if len(types) == 0 || types[len(types)-1] != "error" || !strings.Contains(failure.Message, cutMessage) || failure.Code != "server_error" ||
		failure.SequenceNumber != 7 || !failure.JSON.SequenceNumber.Valid() {
		t.Fatalf("cut stream: events %v, error %s; want the stream to end with an error event (server_error, sequence_number 7)", types, failure.RawJSON())
	}
	for _, typ := range types {
		if typ == "response.completed" || typ == "response.incomplete" {
			t.Fatalf("a cut stream's events %v end like a whole response", types)
		}
	}
	if text.String() != "one two three " {
		t.Fatalf("text before the error %q, want the three deltas", text.String())
	}
	checkPartial(t, onlyEvent(t, e), 3)

	_, _, body := e.rawHeader("/v1/responses", `{"model":"gpt-r","input":"hi","stream":true}`, "X-Cut", "stream")
	events := bytes.Split(bytes.TrimSuffix(body, []byte("\n\n")), []byte("\n\n"))
	name, data, _ := bytes.Cut(events[len(events)-1], []byte("\ndata: "))
	var v struct {
		Type     string  `json:"type"`
		Code     string  `json:"code"`
		Message  string  `json:"message"`
		Param    *string `json:"param"`
		Sequence *int64  `json:"sequence_number"`
	}
	if string(name) != "event: error" || json.Unmarshal(data, &v) != nil || v.Type != "error" || v.Code != "server_error" ||
		!strings.Contains(v.Message, cutMessage) || v.Sequence == nil || *v.Sequence != 7 || !bytes.Contains(data, []byte(`"param":null`)) ||
		bytes.Contains(body, []byte("response.completed")) {
		t.Fatalf("cut /v1/responses stream ends\n%s\nwant event: error with the Responses API's error event", tail(body))
	}
}

// Non-streamed requests the backend never finished. A backend that drops
// the connection before its answer's head (what Ollama does: a whole
// answer is written at the end) is a failed attempt: with no other
// candidate the client gets 502 in its dialect's error shape. A backend
// that sent the head and part of the body: translated, nothing of the
// answer went out (it is held whole to be translated), so the client gets
// the same 502; passed through, the head and bytes went out and the
// connection is aborted, and the SDKs report an error rather than a short
// answer.
func TestCutNonStreamDialects(t *testing.T) {
	t.Run("anthropic, ollama backend, before the head", func(t *testing.T) {
		e := newMixedEnv(t, 1, nil, nil)
		_, err := anthropicClient(e, ollamatest.FaultHeader, `{"fail_after_chunks":2}`).Messages.New(ctx(t), anthropicParams)
		var apiErr *anthropic.Error
		if !errors.As(err, &apiErr) || apiErr.StatusCode != http.StatusBadGateway || !strings.Contains(apiErr.RawJSON(), `"type":"error"`) {
			t.Fatalf("cut message: err %T %v, want a 502 in Anthropic's error shape", err, err)
		}
		code, h, body := e.rawHeader("/v1/messages", `{"model":"tiny","max_tokens":50,"messages":[{"role":"user","content":"hi"}]}`,
			ollamatest.FaultHeader, `{"fail_after_chunks":2}`)
		checkAnthropicError(t, code, h, body)
	})
	t.Run("anthropic, openai backend, translated, half the body", func(t *testing.T) {
		stub := cutBodyBackend(t)
		e := openAIStubEnv(t, "stub", stub.URL)
		p := anthropicParams
		p.Model = "gpt-c"
		msg, err := anthropicClient(e, "X-Unused", "1").Messages.New(ctx(t), p)
		var apiErr *anthropic.Error
		if !errors.As(err, &apiErr) || apiErr.StatusCode != http.StatusBadGateway {
			t.Fatalf("a cut body: %v, err %v; want a 502 in Anthropic's shape", msg, err)
		}
		checkNoPartial(t, e)
	})
	t.Run("responses, before the head", func(t *testing.T) {
		e := responsesEnv(t)
		_, err := e.oa.Responses.New(ctx(t), responsesParams, option.WithHeader("X-Cut", "before"))
		var apiErr *openai.Error
		if !errors.As(err, &apiErr) || apiErr.StatusCode != http.StatusBadGateway {
			t.Fatalf("cut response: err %T %v, want a 502", err, err)
		}
		code, h, body := e.rawHeader("/v1/responses", `{"model":"gpt-r","input":"hi"}`, "X-Cut", "before")
		var v struct {
			Error struct {
				Message string  `json:"message"`
				Type    string  `json:"type"`
				Param   *string `json:"param"`
			} `json:"error"`
		}
		if code != http.StatusBadGateway || !strings.HasPrefix(h.Get("Content-Type"), "application/json") || json.Unmarshal(body, &v) != nil || v.Error.Message == "" {
			t.Fatalf("cut response: %d %q %s, want 502 with OpenAI's error object", code, h.Get("Content-Type"), body)
		}
	})
	t.Run("responses, half the body", func(t *testing.T) {
		e := responsesEnv(t)
		res, err := e.oa.Responses.New(ctx(t), responsesParams, option.WithHeader("X-Cut", "body"))
		if err == nil {
			t.Fatalf("a cut body was taken for a whole response: %s", res.RawJSON())
		}
		checkNoPartial(t, e)
	})
}

// checkAnthropicError checks a raw answer is Anthropic's error object with
// a 502-class status.
func checkAnthropicError(t *testing.T, code int, h http.Header, body []byte) {
	t.Helper()
	var v anthropicErrorBody
	if code < 500 || code > 504 || !strings.HasPrefix(h.Get("Content-Type"), "application/json") || json.Unmarshal(body, &v) != nil ||
		v.Type != "error" || v.Error.Type == "" || v.Error.Message == "" {
		t.Fatalf("cut message: %d %q %s, want a 5xx with Anthropic's error object", code, h.Get("Content-Type"), body)
	}
}

// checkNoPartial checks that the non-streamed requests recorded were
// errors, not partial answers: nothing of them was counted.
func checkNoPartial(t *testing.T, e *mixedEnv) {
	t.Helper()
	waitFor(t, func() bool { return len(e.events.all()) > 0 })
	for _, ev := range e.events.all() {
		if !ev.Error || ev.Partial {
			t.Fatalf("cut body recorded as %+v: want an error, not partial", ev)
		}
	}
}

// cleanEndBackend is an OpenAI-type backend serving model gpt-t whose
// streams send three content chunks and then end cleanly, with neither a
// finish_reason nor data: [DONE]: an answer cut short by a backend that
// did not break the connection.
func cleanEndBackend(t *testing.T) *httptest.Server {
	t.Helper()
	s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/v1/models" {
			io.WriteString(w, `{"object":"list","data":[{"id":"gpt-t","object":"model"}]}`)
			return
		}
		io.Copy(io.Discard, r.Body) //nolint:errcheck // read before answering
		w.Header().Set("Content-Type", "text/event-stream")
		for _, word := range []string{"one ", "two ", "three "} {
			fmt.Fprintf(w, "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"content\":%q}}]}\n\n", word)
		}
	}))
	t.Cleanup(s.Close)
	return s
}

// Translated streams the backend ended cleanly before the answer's end:
// Anthropic's and Ollama's clients see an error after the three chunks,
// not a message_stop or a done chunk.
func TestCutStreamDialectsCleanEnd(t *testing.T) {
	stub := cleanEndBackend(t)
	e := openAIStubEnv(t, "stub", stub.URL)
	p := anthropicParams
	p.Model = "gpt-t"
	stream := anthropicClient(e, "X-Unused", "1").Messages.NewStreaming(ctx(t), p)
	var types []string
	for stream.Next() {
		types = append(types, stream.Current().Type)
	}
	if err := stream.Err(); err == nil || !strings.Contains(err.Error(), cutMessage) || strings.Contains(strings.Join(types, " "), "message_stop") {
		t.Fatalf("anthropic: err %v after events %v, want the stream's error and no message_stop", err, types)
	}

	var chunks []string
	err := e.ol.Chat(ctx(t), &api.ChatRequest{Model: "gpt-t", Messages: []api.Message{{Role: "user", Content: "hi"}}}, func(r api.ChatResponse) error {
		if r.Done {
			t.Errorf("a done chunk in a stream cut short: %+v", r)
		}
		chunks = append(chunks, r.Message.Content)
		return nil
	})
	if err == nil || !strings.Contains(err.Error(), cutMessage) || strings.Join(chunks, "") != "one two three " {
		t.Fatalf("ollama: err %v after %q, want the three chunks and the stream's error", err, chunks)
	}
}
