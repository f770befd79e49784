package bareproxy

import (
	"bufio"
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// TestForwardsBodyAndFlushesStreams checks the two things the baseline must
// do like a streaming router: pass the request body through, and deliver
// each streamed chunk as soon as the backend flushes it.
func TestForwardsBodyAndFlushesStreams(t *testing.T) {
	release := make(chan struct{})
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		w.Header().Set("Content-Type", "application/x-ndjson")
		io.WriteString(w, "got "+string(body)+"\n")
		w.(http.Flusher).Flush()
		<-release
		io.WriteString(w, "done\n")
	}))
	defer backend.Close()
	u, _ := url.Parse(backend.URL)
	p, err := Start("127.0.0.1:0", u)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close(context.Background())

	client := &http.Client{Timeout: 5 * time.Second}
	defer client.CloseIdleConnections()
	resp, err := client.Post(p.URL+"/api/chat", "application/json", strings.NewReader(`{"model":"tiny"}`))
	if err != nil {
		close(release)
		t.Fatal(err)
	}
	defer resp.Body.Close()
	r := bufio.NewReader(resp.Body)
	first := make(chan string, 1)
	go func() {
		line, _ := r.ReadString('\n')
		first <- line
	}()
	select {
	case line := <-first:
		if line != "got {\"model\":\"tiny\"}\n" {
			t.Errorf("first line %q", line)
		}
	case <-time.After(2 * time.Second):
		t.Error("first chunk not delivered before the stream ended")
	}
	close(release)
	rest, _ := io.ReadAll(r)
	if string(rest) != "done\n" {
		t.Errorf("rest %q", rest)
	}
}
