package server

import (
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ollama/ollama/api"

	"github.com/droverhq/drover/pkg/config"
	"github.com/droverhq/drover/services/proxy/internal/backend"
	"github.com/droverhq/drover/testkit/ollamatest"
)

// A client that stops reading a stream cannot hold a backend slot: once a
// chunk cannot be written within routing.write_timeout, the request ends,
// its slot is released and the backend request is cancelled, though the
// client never closed its connection.
func TestClientThatStopsReadingLosesItsSlot(t *testing.T) {
	e := newEnv(t, 1, nil, func(c *config.Config) {
		c.Routing.WriteTimeout = 200 * time.Millisecond
		c.Routing.CancelGrace = time.Millisecond
	})
	warm(t, e)
	// A long answer, as fast as the fake can write it: far more than the
	// socket buffers between the two hold.
	body := string(chatBody("tiny", true, `{"chunks":2000000}`))
	conn, err := net.Dial("tcp", e.http.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.(*net.TCPConn).SetReadBuffer(4096) //nolint:errcheck // smaller fills sooner; any size works
	req := "POST /api/chat HTTP/1.1\r\nHost: drover\r\nContent-Type: application/json\r\nContent-Length: " +
		strconv.Itoa(len(body)) + "\r\n\r\n" + body
	if _, err := io.WriteString(conn, req); err != nil {
		t.Fatal(err)
	}
	// The stream started: the backend is generating for this client.
	waitFor(t, func() bool { return e.fakes[0].InFlight("tiny") == 1 })
	// Then the client reads nothing more: the proxy's writes block, the
	// deadline passes, and the request ends on the proxy and the backend.
	waitFor(t, func() bool { return e.fakes[0].InFlight("tiny") == 0 && inFlight(e) == 0 })
	if got := e.fakes[0].Counters().EvalCount; got >= 2000000 {
		t.Fatalf("the backend generated the whole answer (%d tokens) for a client that stopped reading", got)
	}
}

// inFlight is the number of slots the router holds on every backend.
func inFlight(e *env) int {
	n := 0
	for _, models := range e.srv.Router.InFlight() {
		for _, c := range models {
			n += c
		}
	}
	return n
}

// A backend that takes connections and never answers a streamed request on
// a loaded model: after routing.first_byte_timeout the attempt fails over
// to the next backend and counts against the silent one's breaker, instead
// of holding the request for header_timeout.
func TestFirstByteTimeoutFailsOverAndTripsTheBreaker(t *testing.T) {
	// The silent backend: an Ollama with the model loaded, behind a front
	// that passes everything on but chat requests, which it holds, writing
	// nothing, until the caller gives up.
	inner := ollamatest.New(ollamatest.Config{Loaded: []string{"tiny"}})
	if err := inner.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(inner.Close)
	target, _ := url.Parse(inner.URL())
	pass := httputil.NewSingleHostReverseProxy(target)
	var held atomic.Int64
	front := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/api/chat" {
			held.Add(1)
			io.Copy(io.Discard, r.Body) //nolint:errcheck // read, so that the server notices the caller leave
			<-r.Context().Done()
			return
		}
		pass.ServeHTTP(w, r)
	}))
	t.Cleanup(front.Close)
	e := newMixedEnv(t, 1, nil, func(c *config.Config) {
		c.Backends = append(c.Backends, config.Backend{Name: "silent", URL: front.URL})
		c.Routing.FirstByteTimeout = 300 * time.Millisecond
		c.Routing.Strategy = config.StrategyRoundRobin
		c.Health.FailureThreshold = 1
		c.Health.OpenFor = time.Minute
	})
	// The router knows the model is loaded there (from /api/ps), so the
	// wait for headers is first_byte_timeout's, not a cold load's.
	silent, _ := e.srv.Fleet.Backend("silent")
	if _, err := e.srv.Fleet.Loaded(ctx(t), silent); err != nil {
		t.Fatal(err)
	}
	for i := 0; held.Load() == 0; i++ {
		if i == 20 {
			t.Fatal("no request reached the silent backend")
		}
		stream := true
		var final api.ChatResponse
		err := e.ol.Chat(ctx(t), &api.ChatRequest{Model: "tiny", Stream: &stream, Messages: []api.Message{{Role: "user", Content: "hi"}}},
			func(r api.ChatResponse) error { final = r; return nil })
		if err != nil || !final.Done {
			t.Fatalf("request %d: %v %+v", i, err, final)
		}
	}
	if st := silent.Health.State(); st != backend.Open {
		t.Fatalf("silent backend's breaker is %s, want open", st)
	}
	// Let go of nothing: the attempt was cancelled, so the front's
	// handler saw its request end.
	waitFor(t, func() bool { return inFlight2(e) == 0 })
}

// inFlight2 is inFlight for a mixedEnv.
func inFlight2(e *mixedEnv) int {
	n := 0
	for _, models := range e.srv.Router.InFlight() {
		for _, c := range models {
			n += c
		}
	}
	return n
}
