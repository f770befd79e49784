package lb

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// replica is a stand-in for drover-proxy that echoes the body and names
// itself.
func replica(name string, hits *atomic.Int64) *httptest.Server {
	return httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		body, _ := io.ReadAll(r.Body)
		w.Header().Set("X-Replica", name)
		fmt.Fprintf(w, "%s %s %s", name, r.URL.RequestURI(), body)
	}))
}

func serve(t *testing.T, b *Balancer) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Serve(ctx, ln, b, time.Second) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return "http://" + ln.Addr().String()
}

func post(t *testing.T, url, body string) (int, string) {
	t.Helper()
	resp, err := http.Post(url, "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func TestRoundRobinAndPassThrough(t *testing.T) {
	var ha, hb atomic.Int64
	a, b := replica("a", &ha), replica("b", &hb)
	defer a.Close()
	defer b.Close()
	bal, err := New([]string{a.URL, b.URL}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	url := serve(t, bal)
	for i := range 10 {
		code, got := post(t, url+"/api/chat?x=1", fmt.Sprintf(`{"n":%d}`, i))
		if code != 200 || !strings.HasSuffix(got, fmt.Sprintf(` /api/chat?x=1 {"n":%d}`, i)) {
			t.Fatalf("request %d: %d %q", i, code, got)
		}
	}
	if ha.Load() != 5 || hb.Load() != 5 {
		t.Errorf("hits a=%d b=%d, want 5 and 5", ha.Load(), hb.Load())
	}
}

// A stopped replica refuses connections: every request still succeeds, on
// the other one, with its body intact.
func TestRefusedReplicaIsSkipped(t *testing.T) {
	var ha, hb atomic.Int64
	a, b := replica("a", &ha), replica("b", &hb)
	defer a.Close()
	deadURL := b.URL
	b.Close()
	bal, err := New([]string{a.URL, deadURL}, Options{DownFor: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	url := serve(t, bal)
	for i := range 20 {
		code, got := post(t, url+"/api/generate", fmt.Sprintf("body-%d", i))
		if code != 200 || got != fmt.Sprintf("a /api/generate body-%d", i) {
			t.Fatalf("request %d: %d %q", i, code, got)
		}
	}
	if ha.Load() != 20 {
		t.Errorf("a served %d, want 20", ha.Load())
	}
}

func TestNoReplicaAnswers(t *testing.T) {
	dead := httptest.NewServer(http.NotFoundHandler())
	dead.Close()
	bal, err := New([]string{dead.URL}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	code, got := post(t, serve(t, bal)+"/api/chat", "{}")
	if code != http.StatusBadGateway || !strings.Contains(got, `"error":"no Drover replica answered`) {
		t.Errorf("%d %q", code, got)
	}
}

// Each chunk must reach the client while the replica is still writing.
func TestStreamsAreFlushed(t *testing.T) {
	next := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/x-ndjson")
		for i := range 3 {
			fmt.Fprintf(w, "{\"i\":%d}\n", i)
			w.(http.Flusher).Flush()
			<-next
		}
	}))
	defer srv.Close()
	bal, err := New([]string{srv.URL}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.Post(serve(t, bal)+"/api/chat", "application/json", strings.NewReader("{}"))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	rd := bufio.NewReader(resp.Body)
	for i := range 3 {
		line, err := rd.ReadString('\n')
		if err != nil || line != fmt.Sprintf("{\"i\":%d}\n", i) {
			t.Fatalf("chunk %d: %q %v", i, line, err)
		}
		next <- struct{}{}
	}
}

// A replica that stops the way drover-proxy does (http.Server.Shutdown:
// listener closed, idle connections closed, requests in progress finished)
// while requests keep coming: none of them may fail.
func TestReplicaStoppingUnderLoad(t *testing.T) {
	var ha, hb atomic.Int64
	a := replica("a", &ha)
	defer a.Close()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b := &http.Server{Handler: replica("b", &hb).Config.Handler}
	go b.Serve(ln) //nolint:errcheck
	bal, err := New([]string{a.URL, "http://" + ln.Addr().String()}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	url := serve(t, bal)
	var wg sync.WaitGroup
	var failed atomic.Int64
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 100 {
				resp, err := http.Post(url+"/api/chat", "application/json", strings.NewReader(fmt.Sprintf("%d-%d", w, i)))
				if err != nil {
					failed.Add(1)
					continue
				}
				io.Copy(io.Discard, resp.Body) //nolint:errcheck
				resp.Body.Close()
				if resp.StatusCode != 200 {
					failed.Add(1)
				}
				if w == 0 && i == 30 {
					b.Shutdown(context.Background()) //nolint:errcheck
				}
			}
		}()
	}
	wg.Wait()
	if failed.Load() != 0 {
		t.Errorf("%d requests failed while a replica stopped", failed.Load())
	}
	if hb.Load() == 0 || ha.Load()+hb.Load() != 800 {
		t.Errorf("hits a=%d b=%d, want 800 in all with some on b", ha.Load(), hb.Load())
	}
}

func TestBadReplicaURL(t *testing.T) {
	for _, r := range [][]string{nil, {"127.0.0.1:1"}, {"ftp://x"}} {
		if _, err := New(r, Options{}); err == nil {
			t.Errorf("%q: want an error", r)
		}
	}
}
