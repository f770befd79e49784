package ollamatest

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

const benchChat = `{"model":"tiny","messages":[{"role":"user","content":"hello there, how are you today?"}]}`

// BenchmarkHandlerChat measures the handler alone (no sockets).
func BenchmarkHandlerChat(b *testing.B) {
	s := New(Config{})
	defer s.Close()
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			w := httptest.NewRecorder()
			s.ServeHTTP(w, httptest.NewRequest("POST", "/api/chat", strings.NewReader(benchChat)))
			if w.Code != 200 {
				b.Fatal(w.Code)
			}
		}
	})
}

// BenchmarkLoopbackChat measures whole requests over loopback HTTP.
func BenchmarkLoopbackChat(b *testing.B) {
	s := New(Config{})
	if err := s.Start(); err != nil {
		b.Fatal(err)
	}
	tr := &http.Transport{MaxIdleConnsPerHost: 64}
	defer func() { tr.CloseIdleConnections(); s.Close() }()
	c := &http.Client{Transport: tr}
	url := s.URL() + "/api/chat"
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			resp, err := c.Post(url, "application/json", strings.NewReader(benchChat))
			if err != nil {
				b.Fatal(err)
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
	})
}
