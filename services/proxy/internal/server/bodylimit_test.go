package server

import (
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/droverhq/drover/pkg/config"
)

// limitedEnv is newEnv behind an http.Server built by HTTPServer, as
// drover-proxy serves, with small limits for tests.
func limitedEnv(t *testing.T, set func(*config.Server)) *env {
	t.Helper()
	e := newEnv(t, 1, nil, func(c *config.Config) {
		c.Server = config.Server{MaxBodyBytes: 64 << 10, MaxBlobBytes: 1 << 20, MaxHeaderBytes: 4 << 10}
		if set != nil {
			set(&c.Server)
		}
	})
	hs := httptest.NewUnstartedServer(nil)
	hs.Config = e.srv.HTTPServer()
	hs.Start()
	t.Cleanup(func() { hs.CloseClientConnections(); hs.Close() })
	e.url = hs.URL
	return e
}

// rawRequest writes head (and body, if any) on a new connection and reads
// the response's status line and headers, with a generous deadline so a
// hang fails the test rather than blocking it.
func rawRequest(t *testing.T, base, head string, body []byte) (net.Conn, *http.Response) {
	t.Helper()
	conn, err := net.Dial("tcp", strings.TrimPrefix(base, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	conn.SetDeadline(time.Now().Add(20 * time.Second)) //nolint:errcheck
	if _, err := io.WriteString(conn, head); err != nil {
		t.Fatal(err)
	}
	if body != nil {
		conn.Write(body) //nolint:errcheck // the server may refuse it midway
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatalf("reading the answer to %q: %v", strings.SplitN(head, "\r\n", 2)[0], err)
	}
	return conn, resp
}

// A 300 MB Content-Length on each API's inference route is refused with
// 413 in that API's error shape, before one byte of the body was sent: the
// client here sends none, so a proxy that waited for it would hang. A
// chunked body over the limit is cut at it, also 413; one at the limit
// goes through.
func TestBodyOverLimitIs413InEachAPIsShape(t *testing.T) {
	e := limitedEnv(t, nil)
	for _, route := range []string{"POST /api/chat", "POST /v1/chat/completions", "POST /v1/messages"} {
		_, path, _ := strings.Cut(route, " ")
		head := fmt.Sprintf("POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n", path, 300<<20)
		_, resp := rawRequest(t, e.url, head, nil)
		body, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != http.StatusRequestEntityTooLarge || !resp.Close {
			t.Fatalf("%s with Content-Length 300 MB: %d (close %v) %s", route, resp.StatusCode, resp.Close, body)
		}
		checkShape(t, route, accessCall{resp.StatusCode, body, resp.Header})

		chunked := io.MultiReader(strings.NewReader(`{"model":"tiny","messages":[{"role":"user","content":"`), strings.NewReader(strings.Repeat("a", 1<<20)), strings.NewReader(`"}]}`))
		req, _ := http.NewRequestWithContext(t.Context(), http.MethodPost, e.url+path, io.NopCloser(chunked))
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ = io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusRequestEntityTooLarge {
			t.Fatalf("%s chunked 1 MiB: %d %s", route, resp.StatusCode, body)
		}
		checkShape(t, route, accessCall{resp.StatusCode, body, resp.Header})
	}
	if got := refusalsCounted(t, e, "body_too_large"); got != 6 {
		t.Fatalf("drover_client_refusals_total{reason=\"body_too_large\"} = %v after six refusals", got)
	}
	// At the limit exactly: served.
	prefix, suffix := `{"model":"tiny","stream":false,"messages":[{"role":"user","content":"`, `"}]}`
	atLimit := prefix + strings.Repeat("a", 64<<10-len(prefix)-len(suffix)) + suffix
	if c := callBody(t, e.url, "POST", "/api/chat", atLimit, ""); c.status != http.StatusOK {
		t.Fatalf("a body at the limit: %d %s", c.status, c.body)
	}
}

// A client sending its body a byte at a time gets 408 once
// server.body_timeout passed, and its connection is closed, however many
// do it at once.
func TestSlowBodyIs408AndClosed(t *testing.T) {
	e := limitedEnv(t, func(s *config.Server) { s.BodyTimeout = 300 * time.Millisecond })
	const clients = 8
	type result struct {
		status int
		body   []byte
		header http.Header
		closed bool
		err    error
	}
	results := make(chan result, clients)
	for range clients {
		go func() {
			conn, err := net.Dial("tcp", strings.TrimPrefix(e.url, "http://"))
			if err != nil {
				results <- result{err: err}
				return
			}
			defer conn.Close()
			conn.SetDeadline(time.Now().Add(20 * time.Second)) //nolint:errcheck

			head := "POST /api/chat HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"
			io.WriteString(conn, head) //nolint:errcheck // a failure shows in the answer read below
			stop := make(chan struct{})
			defer close(stop)
			go func() { // a byte every 20ms, until refused
				tick := time.NewTicker(20 * time.Millisecond)
				defer tick.Stop()
				for {
					select {
					case <-stop:
						return
					case <-tick.C:
						if _, err := conn.Write([]byte(" ")); err != nil {
							return
						}
					}
				}
			}()
			br := bufio.NewReader(conn)
			resp, err := http.ReadResponse(br, nil)
			if err != nil {
				results <- result{err: err}
				return
			}
			body, _ := io.ReadAll(resp.Body)
			// Closed: the next read ends, not a deadline.
			_, err = br.ReadByte()
			results <- result{status: resp.StatusCode, body: body, header: resp.Header, closed: err == io.EOF || (err != nil && !isTimeout(err))}
		}()
	}
	for range clients {
		r := <-results
		if r.err != nil || r.status != http.StatusRequestTimeout || !r.closed {
			t.Fatalf("slow client: status %d, closed %v, err %v", r.status, r.closed, r.err)
		}
		checkShape(t, "POST /api/chat", accessCall{r.status, r.body, r.header})
	}
	if got := refusalsCounted(t, e, "body_timeout"); got != clients {
		t.Fatalf("drover_client_refusals_total{reason=\"body_timeout\"} = %v after %d", got, clients)
	}
}

// refusalsCounted reads drover_client_refusals_total for reason.
func refusalsCounted(t *testing.T, e *env, reason string) float64 {
	t.Helper()
	families, err := e.srv.Metrics.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() != "drover_client_refusals_total" {
			continue
		}
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "reason" && l.GetValue() == reason {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	t.Fatalf("no drover_client_refusals_total{reason=%q}", reason)
	return 0
}

func isTimeout(err error) bool {
	ne, ok := err.(net.Error)
	return ok && ne.Timeout()
}

// A head over server.max_header_bytes is refused by net/http with 431.
func TestHeaderOverLimitIs431(t *testing.T) {
	e := limitedEnv(t, nil)
	// net/http allows 4096 bytes of slack over MaxHeaderBytes.
	head := "GET /api/tags HTTP/1.1\r\nHost: x\r\nX-Big: " + strings.Repeat("b", 16<<10) + "\r\n\r\n"
	_, resp := rawRequest(t, e.url, head, nil)
	if resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
		t.Fatalf("16 KiB header with a 4 KiB limit: %d", resp.StatusCode)
	}
}

// Blob uploads have their own, larger limit and are streamed: a blob
// larger than server.max_body_bytes reaches the backend whole; one larger
// than server.max_blob_bytes is refused, by Content-Length or once cut.
func TestBlobUploadHasItsOwnLimit(t *testing.T) {
	e := limitedEnv(t, nil)
	blob := []byte(strings.Repeat("model weights ", (512<<10)/14))
	sum := sha256.Sum256(blob)
	path := "/api/blobs/sha256:" + hex.EncodeToString(sum[:])
	c := callBody(t, e.url, "POST", path, string(blob), "")
	if c.status != http.StatusCreated {
		t.Fatalf("a %d-byte blob under max_blob_bytes: %d %s", len(blob), c.status, c.body)
	}
	head := fmt.Sprintf("POST %s HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n", path, 2<<20)
	_, resp := rawRequest(t, e.url, head, nil)
	if resp.StatusCode != http.StatusRequestEntityTooLarge {
		t.Fatalf("a 2 MiB blob by Content-Length: %d", resp.StatusCode)
	}
	big := strings.Repeat("x", 2<<20)
	sum = sha256.Sum256([]byte(big))
	req, _ := http.NewRequestWithContext(t.Context(), http.MethodPost, e.url+"/api/blobs/sha256:"+hex.EncodeToString(sum[:]), io.NopCloser(strings.NewReader(big)))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusRequestEntityTooLarge {
		t.Fatalf("a 2 MiB chunked blob: %d %s", resp.StatusCode, body)
	}
	checkShape(t, "POST /api/blobs/x", accessCall{resp.StatusCode, body, resp.Header})
}

// A head that never ends is dropped after server.read_header_timeout, and
// an idle keep-alive connection after server.idle_timeout.
func TestSlowHeadAndIdleConnectionsAreClosed(t *testing.T) {
	e := limitedEnv(t, func(s *config.Server) {
		s.ReadHeaderTimeout, s.IdleTimeout = 200*time.Millisecond, 300*time.Millisecond
	})
	dial := func() net.Conn {
		conn, err := net.Dial("tcp", strings.TrimPrefix(e.url, "http://"))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		conn.SetDeadline(time.Now().Add(20 * time.Second)) //nolint:errcheck
		return conn
	}
	slow := dial()
	io.WriteString(slow, "GET /api/tags HTTP/1.1\r\nHost: x\r\n") //nolint:errcheck // the head never ends
	if _, err := io.ReadAll(slow); err != nil {
		t.Fatalf("a head that never ends: %v (want the connection closed)", err)
	}
	idle := dial()
	io.WriteString(idle, "GET /health HTTP/1.1\r\nHost: x\r\n\r\n") //nolint:errcheck
	br := bufio.NewReader(idle)
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != http.StatusOK || resp.Close {
		t.Fatalf("a keep-alive request: %v %v", resp, err)
	}
	io.Copy(io.Discard, resp.Body) //nolint:errcheck
	if _, err := br.ReadByte(); err != io.EOF {
		t.Fatalf("an idle keep-alive connection: %v (want it closed)", err)
	}
}
