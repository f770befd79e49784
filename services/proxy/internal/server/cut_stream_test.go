package server

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"testing"

	"github.com/ollama/ollama/api"
	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"

	"github.com/droverhq/drover/pkg/config"
	"github.com/droverhq/drover/pkg/usage"
	"github.com/droverhq/drover/testkit/ollamatest"
	"github.com/droverhq/drover/testkit/openaitest"
)

// faultTransport puts a fake backend's fault on every request, as the
// header key and as the body's "fake" field (a field the proxy passes on
// untouched, where a translation keeps only the header): how a fault
// reaches a fake through an official client that has no field for it.
type faultTransport struct{ key, fault string }

func (f faultTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	r.Header.Set(f.key, f.fault)
	if r.Body != nil {
		b, err := io.ReadAll(r.Body)
		if err != nil {
			return nil, err
		}
		if len(b) > 0 && b[0] == '{' {
			b = append([]byte(`{"fake":`+f.fault+`,`), b[1:]...)
		}
		r.Body, r.ContentLength = io.NopCloser(bytes.NewReader(b)), int64(len(b))
	}
	return http.DefaultTransport.RoundTrip(r)
}

// onlyEvent waits for the one usage event the test's request produced.
func onlyEvent(t *testing.T, e *mixedEnv) usage.Event {
	t.Helper()
	waitFor(t, func() bool { return len(e.events.all()) > 0 })
	evs := e.events.all()
	if len(evs) != 1 {
		t.Fatalf("%d usage events, want 1: %+v", len(evs), evs)
	}
	return evs[0]
}

// checkPartial checks the event of a stream cut after chunks content
// chunks: one attempt, an error, partial, the chunks as output tokens and
// no prompt count (the backends here report it only at the end).
func checkPartial(t *testing.T, ev usage.Event, chunks int64) {
	t.Helper()
	if !ev.Partial || !ev.Error || ev.Status != 200 || ev.Attempts != 1 || ev.OutputTokens == nil || *ev.OutputTokens != chunks || ev.InputTokens != nil {
		t.Fatalf("cut stream recorded as %+v (output %v), want partial, error, %d output tokens, input unknown", ev, ptr(ev.OutputTokens), chunks)
	}
}

func ptr(p *int64) any {
	if p == nil {
		return nil
	}
	return *p
}

// A backend that dies mid-stream: the official Ollama client sees an error
// (Ollama's own in-stream {"error": ...} line) after the chunks it got,
// not a short answer that ended well, and the usage recorded is the
// chunks streamed, flagged partial.
func TestCutStreamOllamaClientSeesError(t *testing.T) {
	for _, c := range []struct {
		name     string
		ollama   int
		oai      []openaitest.Config
		header   string
		wantText string
	}{
		{"ollama backend", 1, nil, ollamatest.FaultHeader, ""},
		{"openai backend, translated", 0, []openaitest.Config{{Flavor: openaitest.VLLM}}, openaitest.FaultHeader, ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			e := newMixedEnv(t, c.ollama, c.oai, nil)
			u, _ := url.Parse(e.url)
			ol := api.NewClient(u, &http.Client{Transport: faultTransport{c.header, `{"fail_after_chunks":3}`}})
			var got []api.ChatResponse
			err := ol.Chat(ctx(t), &api.ChatRequest{Model: "tiny", Messages: []api.Message{{Role: "user", Content: "hi"}}}, func(r api.ChatResponse) error {
				got = append(got, r)
				return nil
			})
			if err == nil || !strings.Contains(err.Error(), "an error was encountered while running the model") {
				t.Fatalf("cut stream: err %v after %d chunks, want the stream's error", err, len(got))
			}
			content := 0
			for _, r := range got {
				if r.Done {
					t.Fatalf("a done chunk in a cut stream: %+v", r)
				}
				if r.Message.Content != "" {
					content++
				}
			}
			if content != 3 {
				t.Fatalf("%d content chunks before the error, want 3", content)
			}
			checkPartial(t, onlyEvent(t, e), 3)
		})
	}
}

// The same on /v1: the OpenAI SDK's stream ends with an error, and the raw
// stream has an error event and no data: [DONE].
func TestCutStreamOpenAIClientSeesError(t *testing.T) {
	e := newMixedEnv(t, 1, nil, nil)
	if !ollamaServesV1(t, e.ollama[0]) {
		t.Skip("the fake does not serve /v1")
	}
	stream := e.oa.Chat.Completions.NewStreaming(ctx(t), openai.ChatCompletionNewParams{
		Model:    "tiny",
		Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage("hi")},
	}, option.WithHeader(ollamatest.FaultHeader, `{"fail_after_chunks":3}`))
	content := 0
	for stream.Next() {
		if len(stream.Current().Choices) > 0 && stream.Current().Choices[0].Delta.Content != "" {
			content++
		}
	}
	if err := stream.Err(); err == nil || !strings.Contains(err.Error(), "an error was encountered while running the model") {
		t.Fatalf("cut stream: err %v after %d chunks, want the stream's error", err, content)
	}
	if content != 3 {
		t.Fatalf("%d content chunks before the error, want 3", content)
	}
	checkPartial(t, onlyEvent(t, e), 3)

	_, _, body := e.rawHeader("/v1/chat/completions", `{"model":"tiny","stream":true,"messages":[{"role":"user","content":"hi"}]}`,
		ollamatest.FaultHeader, `{"fail_after_chunks":2}`)
	if bytes.Contains(body, []byte("[DONE]")) || !bytes.HasSuffix(body, []byte("\"type\":\"api_error\",\"param\":null,\"code\":null}}\n\n")) || !bytes.Contains(body, []byte("\n\ndata: {\"error\":{\"message\":")) {
		t.Fatalf("cut /v1 stream ends\n%s\nwant an error event on its own and no [DONE]", tail(body))
	}
}

// Anthropic's stream (/v1/messages) ends with event: error, no
// message_stop.
func TestCutStreamAnthropicSeesErrorEvent(t *testing.T) {
	e := newMixedEnv(t, 1, nil, nil)
	_, _, body := e.rawHeader("/v1/messages", `{"model":"tiny","max_tokens":50,"stream":true,"messages":[{"role":"user","content":"hi"}]}`,
		ollamatest.FaultHeader, `{"fail_after_chunks":2}`)
	want := "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"api_error\",\"message\":\"an error was encountered while running the model"
	if bytes.Contains(body, []byte("message_stop")) || !bytes.Contains(body, []byte(want)) || !bytes.HasSuffix(body, []byte("\"}}\n\n")) {
		t.Fatalf("cut /v1/messages stream ends\n%s\nwant %q", tail(body), want)
	}
	checkPartial(t, onlyEvent(t, e), 2)
}

func tail(b []byte) []byte { return b[max(len(b)-400, 0):] }

// cutBodyBackend is an OpenAI-type backend whose non-streamed answers
// declare a Content-Length and stop half-way through it.
func cutBodyBackend(t *testing.T) *httptest.Server {
	t.Helper()
	s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/v1/models" {
			io.WriteString(w, `{"object":"list","data":[{"id":"gpt-c","object":"model"}]}`)
			return
		}
		body := `{"id":"x","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"` + strings.Repeat("word ", 400) + `"},"finish_reason":"stop"}],"usage":{"prompt_tokens":5,"completion_tokens":400}}`
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Content-Length", strconv.Itoa(len(body)))
		io.WriteString(w, body[:len(body)/2])
		http.NewResponseController(w).Flush() //nolint:errcheck // then cut
		panic(http.ErrAbortHandler)
	}))
	t.Cleanup(s.Close)
	return s
}

// A plain body the backend cut has no in-band way to say so: the client's
// connection is aborted, so it cannot take the half it got for the answer.
func TestCutPlainBodyAbortsTheConnection(t *testing.T) {
	stub := cutBodyBackend(t)
	e := openAIStubEnv(t, "stub", stub.URL)
	_, err := e.oa.Chat.Completions.New(ctx(t), openai.ChatCompletionNewParams{
		Model: "gpt-c", Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage("hi")},
	})
	if err == nil {
		t.Fatal("a cut body was taken for a whole answer")
	}
	req, _ := http.NewRequestWithContext(ctx(t), http.MethodPost, e.url+"/v1/chat/completions",
		strings.NewReader(`{"model":"gpt-c","messages":[{"role":"user","content":"hi"}]}`))
	// The connection ends before the body does: in the head (still in the
	// proxy's buffer when it aborted) or in the body.
	resp, err := http.DefaultClient.Do(req)
	if err == nil {
		defer resp.Body.Close()
		if _, err := io.ReadAll(resp.Body); !errors.Is(err, io.ErrUnexpectedEOF) {
			t.Fatalf("reading a cut plain body: %v, want unexpected EOF", err)
		}
	}
	for _, ev := range e.events.all() {
		if !ev.Error || ev.Partial {
			t.Fatalf("cut plain body recorded as %+v: want an error, not partial (nothing counted)", ev)
		}
	}
}

// An all-5xx failover whose last error body was larger than what is kept
// of it (64 KiB) is written without the backend's Content-Length, which
// no longer describes it: the client reads it whole, no short body.
func TestFailoverErrorBodyKeptDropsContentLength(t *testing.T) {
	big := `{"error":"` + strings.Repeat("x", 100<<10) + `"}`
	stub := func() *httptest.Server {
		s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path == "/v1/models" {
				io.WriteString(w, `{"object":"list","data":[{"id":"gpt-e","object":"model"}]}`)
				return
			}
			w.Header().Set("Content-Type", "application/json")
			w.Header().Set("Content-Length", strconv.Itoa(len(big)))
			w.WriteHeader(http.StatusInternalServerError)
			io.WriteString(w, big)
		}))
		t.Cleanup(s.Close)
		return s
	}
	a, b := stub(), stub()
	e := newMixedEnv(t, 0, nil, func(c *config.Config) {
		c.Backends = append(c.Backends, config.Backend{Name: "a", URL: a.URL, Type: "openai"}, config.Backend{Name: "b", URL: b.URL, Type: "openai"})
	})
	code, h, body := e.raw("/v1/chat/completions", `{"model":"gpt-e","messages":[{"role":"user","content":"hi"}]}`)
	if code != 500 || len(body) != 64<<10 {
		t.Fatalf("got %d with %d bytes (Content-Length %q), want 500 with the 64 KiB kept", code, len(body), h.Get("Content-Length"))
	}
	if cl := h.Get("Content-Length"); cl != "" && cl != strconv.Itoa(len(body)) {
		t.Fatalf("Content-Length %s for a %d-byte body", cl, len(body))
	}
}

// The raw bytes of a cut /api/chat stream: whole lines, the last one
// Ollama's {"error": ...}, even when the cut fell inside a line.
func TestCutStreamErrorLineStandsAlone(t *testing.T) {
	e := newMixedEnv(t, 1, nil, nil)
	_, _, body := e.raw("/api/chat", `{"model":"tiny","messages":[{"role":"user","content":"hi"}],"fake":{"fail_after_chunks":1}}`)
	sc := bufio.NewScanner(bytes.NewReader(body))
	var last string
	for sc.Scan() {
		last = sc.Text()
		if !strings.HasPrefix(last, "{") || !strings.HasSuffix(last, "}") {
			t.Fatalf("line %q is not a whole JSON object in\n%s", last, body)
		}
	}
	if !strings.HasPrefix(last, `{"error":"an error was encountered while running the model: `) || !bytes.HasSuffix(body, []byte("\n")) {
		t.Fatalf("last line %q", last)
	}
}
