package server

import (
	"bytes"
	"io"
	"net/http"
	"testing"
)

// BenchmarkOpenAIStream drives /v1/chat/completions streams through Drover
// to a fake Ollama, with the client asking for usage (bytes pass through)
// and without (Drover asks for it and hides the usage chunk).
func BenchmarkOpenAIStream(b *testing.B) {
	for _, c := range []struct{ name, body string }{
		{"client-usage", `{"model":"tiny","messages":[{"role":"user","content":"hello there"}],"stream":true,"stream_options":{"include_usage":true}}`},
		{"drover-usage", `{"model":"tiny","messages":[{"role":"user","content":"hello there"}],"stream":true}`},
	} {
		b.Run(c.name, func(b *testing.B) {
			e := newMixedEnv(b, 1, nil, nil)
			client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}}
			defer client.CloseIdleConnections()
			b.ReportAllocs()
			b.SetParallelism(16)
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					resp, err := client.Post(e.url+"/v1/chat/completions", "application/json", bytes.NewBufferString(c.body))
					if err != nil {
						b.Error(err)
						return
					}
					body, _ := io.ReadAll(resp.Body)
					resp.Body.Close()
					if !bytes.HasSuffix(body, []byte("data: [DONE]\n\n")) {
						b.Errorf("%s", body)
						return
					}
				}
			})
		})
	}
}
