package server

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/droverhq/drover/pkg/config"
	"github.com/droverhq/drover/pkg/usage"
	"github.com/droverhq/drover/services/proxy/internal/forward"
	"github.com/droverhq/drover/services/proxy/internal/ollamaapi"
	"github.com/droverhq/drover/testkit/ollamatest"
)

func chatBody(model string, stream bool, fake string) []byte {
	b := `{"model":"` + model + `","messages":[{"role":"user","content":"hi there"}],"stream":` + map[bool]string{true: "true", false: "false"}[stream]
	if fake != "" {
		b += `,"fake":` + fake
	}
	return []byte(b + "}")
}

func post(t *testing.T, ctx context.Context, url string, body []byte) (*http.Response, []byte, error) {
	t.Helper()
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, nil, err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	return resp, data, err
}

func warm(t *testing.T, e *env) {
	t.Helper()
	if _, err := e.client.List(t.Context()); err != nil {
		t.Fatal(err)
	}
}

func TestFailoverOn5xx(t *testing.T) {
	for _, status := range []int{500, 503} {
		e := newEnv(t, 2, nil, func(c *config.Config) { c.Health.FailureThreshold = 2 })
		warm(t, e)
		e.fakes[0].SetFailure(status, "server busy, please try again.  maximum pending requests exceeded")
		for range 6 {
			resp, body, err := post(t, t.Context(), e.url+"/api/chat", chatBody("tiny", false, ""))
			if err != nil || resp.StatusCode != 200 {
				t.Fatalf("status %d: %v %s", status, err, body)
			}
		}
		if got := e.fakes[0].Requests("/api/chat"); got > 2 {
			t.Fatalf("status %d: failing backend got %d requests after its breaker should have opened", status, got)
		}
		if e.fakes[1].Counters().Completed != 6 {
			t.Fatal("healthy backend did not serve all")
		}
	}
}

func TestFailoverOnConnectErrorAndHeaderTimeout(t *testing.T) {
	e := newEnv(t, 2, nil, func(c *config.Config) { c.Routing.HeaderTimeout = 200 * time.Millisecond })
	warm(t, e)
	e.fakes[0].SetHang(true)
	resp, body, err := post(t, t.Context(), e.url+"/api/chat", chatBody("tiny", true, ""))
	if err != nil || resp.StatusCode != 200 || !bytes.Contains(body, []byte(`"done":true`)) {
		t.Fatalf("after header timeout: %v %s", err, body)
	}
	e.fakes[0].SetHang(false)
	e.fakes[1].Down()
	waitFor(t, func() bool { return e.srv.Fleet.Backends[0].Health.State().String() == "closed" })
	resp, body, err = post(t, t.Context(), e.url+"/api/chat", chatBody("tiny", false, ""))
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("after connect error: %v %d %s", err, resp.StatusCode, body)
	}
}

func TestNoRetryAfterBytesStreamed(t *testing.T) {
	e := newEnv(t, 2, nil, nil)
	warm(t, e)
	resp, body, _ := post(t, t.Context(), e.url+"/api/chat", chatBody("tiny", true, `{"fail_after_chunks":2}`))
	// The stream started, so it is not retried, and it does not end as if
	// whole: its last line is Ollama's in-stream error.
	if resp.StatusCode != 200 || bytes.Contains(body, []byte(`"done":true`)) ||
		!bytes.Contains(body, []byte("\n{\"error\":\"an error was encountered while running the model: ")) || !bytes.HasSuffix(body, []byte("\"}\n")) {
		t.Fatalf("want a cut stream ending in an error line, got %d %s", resp.StatusCode, body)
	}
	if n := e.fakes[0].Requests("/api/chat") + e.fakes[1].Requests("/api/chat"); n != 1 {
		t.Fatalf("%d attempts for a stream that had started", n)
	}
	// The event is recorded as the forwarder finishes, which may be just
	// after the client saw the stream end.
	var recorded []usage.Count
	waitFor(t, func() bool {
		recorded = recorded[:0]
		for _, models := range e.srv.Totals.Snapshot() {
			if c, ok := models["tiny"]; ok {
				recorded = append(recorded, c)
			}
		}
		return len(recorded) > 0
	})
	if len(recorded) != 1 {
		t.Fatalf("cut stream recorded on %d backends: %+v", len(recorded), recorded)
	}
	// The two chunks streamed are counted (a partial event); the prompt's
	// count never came.
	if c := recorded[0]; c.Requests != 1 || c.Errors != 1 || c.InputTokens != 0 || c.OutputTokens != 2 || c.UnknownTokens != 1 {
		t.Fatalf("cut stream recorded as %+v, want one request, an error, 2 output tokens, input unknown", c)
	}
}

func TestAllAttemptsFailGivesBackendAnswer(t *testing.T) {
	e := newEnv(t, 2, nil, nil)
	warm(t, e)
	resp, body, _ := post(t, t.Context(), e.url+"/api/chat", chatBody("tiny", false, `{"status":500,"error":"runner crashed"}`))
	if resp.StatusCode != 500 || !strings.Contains(string(body), "runner crashed") {
		t.Fatalf("got %d %s", resp.StatusCode, body)
	}
	if n := e.fakes[0].Requests("/api/chat") + e.fakes[1].Requests("/api/chat"); n != 2 {
		t.Fatalf("%d attempts, want one per backend", n)
	}
}

// A client that hangs up mid-stream does not count against the backend:
// each request reaches it and streams, then the client leaves.
func TestClientCancelIsNotABackendFailure(t *testing.T) {
	e := newEnv(t, 1, nil, func(c *config.Config) { c.Health.FailureThreshold = 2 })
	warm(t, e)
	const cancels = 5
	for range cancels {
		ctx, cancel := context.WithCancel(t.Context())
		req, _ := http.NewRequestWithContext(ctx, http.MethodPost, e.url+"/api/chat",
			bytes.NewReader(chatBody("tiny", true, `{"hang_after_chunks":1}`)))
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		// The first chunk came from the backend: the request is running there.
		if _, err := bufio.NewReader(resp.Body).ReadBytes('\n'); err != nil {
			t.Fatalf("first chunk: %v", err)
		}
		cancel()
		resp.Body.Close()
	}
	if n := e.fakes[0].Requests("/api/chat"); n != cancels {
		t.Fatalf("backend saw %d requests, want %d", n, cancels)
	}
	// Each cancelled request is over once its event is recorded; only then
	// is the breaker's verdict final.
	waitFor(t, func() bool {
		c := e.srv.Totals.Snapshot()["a"]["tiny"]
		return c.Requests == cancels
	})
	// A breaker that opened would be closed again by the next probe, so
	// ask whether any failure was ever recorded, not only the state now.
	if h := e.srv.Fleet.Backends[0].Health.Snapshot(); h.State != "closed" || h.LastError != "" || !h.Since.IsZero() {
		t.Fatalf("breaker after client cancels: %+v", h)
	}
	waitFor(t, func() bool { return len(e.srv.Router.InFlight()) == 0 })
}

func TestQueueFullAndTimeoutAnswer503(t *testing.T) {
	e := newEnv(t, 1, nil, func(c *config.Config) {
		c.Routing.MaxConcurrency = 1
		c.Routing.Queue.MaxLength = 1
		c.Routing.Queue.MaxWait = 300 * time.Millisecond
	})
	warm(t, e)
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); post(t, ctx, e.url+"/api/chat", chatBody("tiny", true, `{"hang":true}`)) }()
	waitFor(t, func() bool { return len(e.srv.Router.InFlight()) == 1 })
	results := make(chan *http.Response, 2)
	bodies := make(chan []byte, 2)
	for range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, body, err := post(t, t.Context(), e.url+"/api/chat", chatBody("tiny", false, ""))
			if err == nil {
				results <- resp
				bodies <- body
			}
		}()
	}
	r1, r2 := <-results, <-results
	if r1.StatusCode != 503 || r2.StatusCode != 503 || r1.Header.Get("Retry-After") == "" || r2.Header.Get("Retry-After") == "" {
		t.Fatalf("got %d and %d", r1.StatusCode, r2.StatusCode)
	}
	for range 2 {
		var eb struct{ Error string }
		if json.Unmarshal(<-bodies, &eb) != nil || !strings.Contains(eb.Error, "server busy") {
			t.Fatalf("error body %+v", eb)
		}
	}
	cancel()
	wg.Wait()
	waitFor(t, func() bool { return len(e.srv.Router.InFlight()) == 0 })
}

func TestModelLoadedIsPreferred(t *testing.T) {
	e := newEnv(t, 3, func(i int, c *ollamatest.Config) {
		if i == 2 {
			c.Loaded = []string{"tiny2"}
		}
	}, nil)
	warm(t, e)
	// /api/ps asks every backend and keeps what each has loaded, which is
	// what routing ranks on.
	if resp, body := get(t, e.url+"/api/ps", nil); resp.StatusCode != 200 || !strings.Contains(body, `"tiny2`) {
		t.Fatalf("/api/ps: %d %s", resp.StatusCode, body)
	}
	for range 5 {
		if resp, body, err := post(t, t.Context(), e.url+"/api/chat", chatBody("tiny2", false, "")); err != nil || resp.StatusCode != 200 {
			t.Fatalf("%v %s", err, body)
		}
	}
	if e.fakes[2].Counters().Completed != 5 {
		t.Fatalf("loaded backend served %d of 5", e.fakes[2].Counters().Completed)
	}
}

// panicWriter blows up on the first body write, like a bug in a handler
// layer above the forwarder would.
type panicWriter struct{ h http.Header }

func (p *panicWriter) Header() http.Header { return p.h }
func (p *panicWriter) WriteHeader(int)     {}
func (p *panicWriter) Write([]byte) (int, error) {
	panic("writer exploded")
}

func TestSlotReleasedOnPanic(t *testing.T) {
	e := newEnv(t, 1, nil, nil)
	warm(t, e)
	func() {
		defer func() {
			if recover() == nil {
				t.Error("no panic")
			}
		}()
		body := chatBody("tiny", true, "")
		req, _ := http.NewRequest(http.MethodPost, "/api/chat", bytes.NewReader(body))
		// Call the forwarder directly: chi's Recoverer would swallow it.
		e.srv.Forward.Serve(&panicWriter{h: http.Header{}}, req, &forward.Request{
			Route: "/api/chat", Method: http.MethodPost, Body: body,
			Model: "tiny", Stream: true, Error: ollamaapi.WriteError,
		})
	}()
	if got := e.srv.Router.InFlight(); len(got) != 0 {
		t.Fatalf("slot leaked after panic: %v", got)
	}
}
