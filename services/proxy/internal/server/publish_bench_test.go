package server

import (
	"bytes"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/droverhq/drover/pkg/config"
	"github.com/droverhq/drover/pkg/usagepub"
	"github.com/droverhq/drover/testkit/natstest"
	"github.com/droverhq/drover/testkit/ollamatest"
)

// BenchmarkChatStreamPublishing is BenchmarkOllamaChatStream with every
// request's usage event published to a real (embedded) JetStream, to see
// what publishing costs and where.
func BenchmarkChatStreamPublishing(b *testing.B) {
	ns := natstest.Start(b)
	fake := ollamatest.New(ollamatest.Config{})
	if err := fake.Start(); err != nil {
		b.Fatal(err)
	}
	defer fake.Close()
	cfg, err := config.FromStruct(&config.Config{Replica: "bench", Backends: []config.Backend{{Name: "a", URL: fake.URL()}}})
	if err != nil {
		b.Fatal(err)
	}
	cfg.NATS.URL = ns.URL()
	nc, err := nats.Connect(ns.URL())
	if err != nil {
		b.Fatal(err)
	}
	defer nc.Close()
	cfg.Usage.SpoolDir = b.TempDir()
	pub, err := usagepub.New(nc, usagepub.WithConfig(cfg.NATS, cfg.Usage), usagepub.WithCreateStream())
	if err != nil {
		b.Fatal(err)
	}
	srv := New(cfg, slog.New(slog.NewTextHandler(io.Discard, nil)), Options{Sink: pub})
	hs := httptest.NewServer(srv.Handler())
	defer func() {
		hs.CloseClientConnections()
		hs.Close()
		srv.Close()
		ctx, cancel := contextWithTimeout(10 * time.Second)
		defer cancel()
		pub.Close(ctx)
	}()
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}}
	defer client.CloseIdleConnections()
	body := []byte(`{"model":"tiny","messages":[{"role":"user","content":"hello there"}],"stream":true}`)
	b.ReportAllocs()
	b.SetParallelism(16)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			resp, err := client.Post(hs.URL+"/api/chat", "application/json", bytes.NewReader(body))
			if err != nil {
				b.Error(err)
				return
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
	})
}
