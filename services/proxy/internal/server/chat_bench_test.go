package server

import (
	"bytes"
	"io"
	"net/http"
	"testing"
)

// BenchmarkOllamaChatStream drives /api/chat streams through Drover to a
// fake Ollama over loopback, as the load tool does.
func BenchmarkOllamaChatStream(b *testing.B) {
	e := newMixedEnv(b, 1, nil, nil)
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}}
	defer client.CloseIdleConnections()
	body := []byte(`{"model":"tiny","messages":[{"role":"user","content":"hello there"}],"stream":true}`)
	b.ReportAllocs()
	b.SetParallelism(16)
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			resp, err := client.Post(e.url+"/api/chat", "application/json", bytes.NewReader(body))
			if err != nil {
				b.Error(err)
				return
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
	})
}
