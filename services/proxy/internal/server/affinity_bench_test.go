package server

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/droverhq/drover/pkg/config"
)

// BenchmarkChatStreamByStrategy is BenchmarkOllamaChatStream with a
// 10 KB chat (a 2,000-token system prompt and six turns) under each
// strategy over four fake backends: what parsing, hashing and ranking add
// to a request end to end (docs/routing.md).
func BenchmarkChatStreamByStrategy(b *testing.B) {
	var msgs []string
	msgs = append(msgs, fmt.Sprintf(`{"role":"system","content":%q}`, strings.Repeat("Answer as the fleet's router would. ", 230)))
	for i := range 6 {
		msgs = append(msgs, fmt.Sprintf(`{"role":"user","content":"question %d about routing?"},{"role":"assistant","content":%q}`, i, strings.Repeat("An answer of some length. ", 8)))
	}
	body := []byte(`{"model":"tiny","stream":true,"messages":[` + strings.Join(msgs, ",") + `,{"role":"user","content":"next"}]}`)
	for _, strategy := range []string{config.StrategyLeastLoaded, config.StrategyPrefix} {
		b.Run(strategy, func(b *testing.B) {
			e := newMixedEnv(b, 4, nil, func(c *config.Config) { c.Routing.Strategy = strategy })
			client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}}
			defer client.CloseIdleConnections()
			b.ReportAllocs()
			b.SetBytes(int64(len(body)))
			b.SetParallelism(16)
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					resp, err := client.Post(e.url+"/api/chat", "application/json", bytes.NewReader(body))
					if err != nil {
						b.Error(err)
						return
					}
					io.Copy(io.Discard, resp.Body) //nolint:errcheck // drained only
					resp.Body.Close()
				}
			})
		})
	}
}
