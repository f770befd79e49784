package server

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/droverhq/drover/pkg/config"
)

// A type: openai backend gets /v1/responses as the client sent it; its
// usage is what is recorded, streamed and not; its 404 for the route is its
// answer.
func TestResponsesToOpenAIBackend(t *testing.T) {
	const whole = `{"id":"resp_1","object":"response","status":"completed","model":"gpt-r","output":[],"usage":{"input_tokens":11,"output_tokens":4,"total_tokens":15}}`
	const stream = "event: response.created\ndata: {\"response\":{\"usage\":null},\"type\":\"response.created\"}\n\n" +
		"event: response.completed\ndata: {\"response\":{\"usage\":{\"input_tokens\":12,\"output_tokens\":5,\"total_tokens\":17}},\"type\":\"response.completed\"}\n\n"
	got := make(chan string, 3)
	stub := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/v1/models":
			io.WriteString(w, `{"object":"list","data":[{"id":"gpt-r","object":"model"},{"id":"gpt-none","object":"model"}]}`)
		case "/v1/responses":
			b, _ := io.ReadAll(r.Body)
			got <- string(b)
			switch {
			case strings.Contains(string(b), "gpt-none"):
				w.Header().Set("Content-Type", "application/json")
				w.WriteHeader(http.StatusNotFound)
				io.WriteString(w, `{"error":"no such route"}`)
			case strings.Contains(string(b), `"stream":true`):
				w.Header().Set("Content-Type", "text/event-stream")
				io.WriteString(w, stream)
			default:
				w.Header().Set("Content-Type", "application/json")
				io.WriteString(w, whole)
			}
		default:
			http.NotFound(w, r)
		}
	}))
	t.Cleanup(stub.Close)
	e := openAIStubEnv(t, "stub", stub.URL)
	for _, c := range []struct {
		body, want string
		status     int
		in, out    int64
	}{
		{`{"model":"gpt-r","input":"hi","store":true}`, whole, 200, 11, 4},
		{`{"model":"gpt-r","input":"hi","stream":true}`, stream, 200, 12, 5},
		{`{"model":"gpt-none","input":"hi"}`, `{"error":"no such route"}`, 404, -1, -1},
	} {
		n := len(e.events.all())
		s, _, b := e.call(t, "POST", e.url+"/v1/responses", c.body)
		if s != c.status || b != c.want {
			t.Fatalf("%s: got %d %q", c.body, s, b)
		}
		if sent := <-got; sent != c.body {
			t.Fatalf("the backend got %s, the client sent %s", sent, c.body)
		}
		var ev []int64
		waitFor(t, func() bool { return len(e.events.all()) > n })
		last := e.events.all()[n]
		if last.InputTokens != nil && last.OutputTokens != nil {
			ev = []int64{*last.InputTokens, *last.OutputTokens}
		}
		if c.in < 0 && ev != nil || c.in >= 0 && (ev == nil || ev[0] != c.in || ev[1] != c.out) {
			t.Fatalf("%s: recorded %v, want %d/%d", c.body, ev, c.in, c.out)
		}
	}
}

// /api/status: cloud is disabled for the fleet when any backend has it
// disabled, with that backend's source.
func TestStatusMergeDisabled(t *testing.T) {
	stub := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json; charset=utf-8")
		switch r.URL.Path {
		case "/api/status":
			io.WriteString(w, `{"cloud":{"disabled":true,"source":"env"}}`)
		case "/api/version":
			io.WriteString(w, `{"version":"0.17.4"}`)
		default:
			io.WriteString(w, `{"models":[]}`)
		}
	}))
	t.Cleanup(stub.Close)
	e := newMixedEnv(t, 2, nil, func(c *config.Config) {
		c.Backends = append(c.Backends, config.Backend{Name: "nocloud", URL: stub.URL})
	})
	s, _, b := e.call(t, "GET", e.url+"/api/status", "")
	if s != 200 || b != `{"cloud":{"disabled":true,"source":"env"}}` {
		t.Fatalf("got %d %s", s, b)
	}
}

// A client that hangs up once it has response.completed missed nothing:
// the request is not an error and its counts are kept, though the backend
// had not closed its stream yet (control: hanging up before it is).
func TestResponsesClientLeavingAfterCompleted(t *testing.T) {
	const created = "event: response.created\ndata: {\"response\":{\"usage\":null},\"type\":\"response.created\"}\n\n"
	const completed = "event: response.completed\ndata: {\"response\":{\"usage\":{\"input_tokens\":12,\"output_tokens\":5,\"total_tokens\":17}},\"type\":\"response.completed\"}\n\n"
	for _, c := range []struct {
		name, sent string
		wantError  bool
	}{
		{"after response.completed", created + completed, false},
		{"mid-way", created, true},
	} {
		t.Run(c.name, func(t *testing.T) {
			stub := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.URL.Path == "/v1/models" {
					io.WriteString(w, `{"object":"list","data":[{"id":"gpt-r","object":"model"}]}`)
					return
				}
				w.Header().Set("Content-Type", "text/event-stream")
				io.WriteString(w, c.sent)
				http.NewResponseController(w).Flush() //nolint:errcheck // the test reads what arrived
				<-r.Context().Done()
			}))
			t.Cleanup(stub.Close)
			e := newMixedEnv(t, 0, nil, func(cfg *config.Config) {
				cfg.Backends = append(cfg.Backends, config.Backend{Name: "stub", URL: stub.URL, Type: "openai"})
			})
			ctx, cancel := context.WithCancel(t.Context())
			defer cancel()
			req, _ := http.NewRequestWithContext(ctx, http.MethodPost, e.url+"/v1/responses", strings.NewReader(`{"model":"gpt-r","input":"hi","stream":true}`))
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			var got []byte
			buf := make([]byte, 4096)
			for !bytes.Contains(got, []byte(c.sent)) {
				n, err := resp.Body.Read(buf)
				got = append(got, buf[:n]...)
				if err != nil {
					t.Fatalf("stream ended early: %v\n%s", err, got)
				}
			}
			cancel()
			resp.Body.Close()
			waitFor(t, func() bool { return len(e.events.all()) > 0 })
			ev := e.events.all()[0]
			if ev.Error != c.wantError || ev.Status != 200 {
				t.Fatalf("event %+v, want error %v", ev, c.wantError)
			}
			if !c.wantError && (ev.InputTokens == nil || *ev.InputTokens != 12 || ev.OutputTokens == nil || *ev.OutputTokens != 5) {
				t.Fatalf("counts lost: %+v", ev)
			}
		})
	}
}
