// Command fake-ollama serves a ollamatest.Server, a fast fake Ollama for
// tests and benchmarks.
package main

import (
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/droverhq/drover/testkit/ollamatest"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:11434", "listen address")
	models := flag.String("models", "", "comma-separated models (name or name=cap+cap, e.g. emb=embedding); empty: tiny,tiny2,tiny-fixed,tiny-embed,tiny-alias")
	loaded := flag.String("loaded", "", "comma-separated models loaded at start")
	version := flag.String("version", "0.17.4", "version reported by /api/version")
	chunks := flag.Int("chunks", ollamatest.DefaultChunks, "content chunks per reply when num_predict is unset")
	chunkDelay := flag.Duration("chunk-delay", 0, "pause before each content chunk")
	latency := flag.Duration("latency", 0, "pause before the first byte of a generation reply")
	load := flag.Duration("load", 0, "pause when a request loads an unloaded model")
	parallel := flag.Int("parallel", 0, "concurrent generations per model (0: unlimited), like OLLAMA_NUM_PARALLEL")
	maxQueue := flag.Int("max-queue", 0, "requests waiting for a slot before 503 (0: unlimited)")
	maxLoaded := flag.Int("max-loaded", 0, "loaded models before eviction (0: unlimited)")
	promptCost := flag.Duration("prompt-token-cost", 0, "prompt evaluation time per uncached prompt token (prefix cache per slot)")
	cacheTokens := flag.Int("cache-tokens", 0, "prompt cache per slot, in tokens (0: the model's context length)")
	flag.Parse()

	cfg := ollamatest.Config{
		Loaded: split(*loaded), Version: *version, Chunks: *chunks, ChunkDelay: *chunkDelay,
		FirstByteLatency: *latency, LoadDuration: *load, Parallel: *parallel, MaxQueue: *maxQueue,
		MaxLoadedModels: *maxLoaded, PromptTokenCost: *promptCost, CacheTokens: *cacheTokens,
	}
	for _, m := range split(*models) {
		name, caps, _ := strings.Cut(m, "=")
		model := ollamatest.Model{Name: name}
		for _, c := range split(strings.ReplaceAll(caps, "+", ",")) {
			model.Capabilities = append(model.Capabilities, ollamatest.Capability(c))
		}
		cfg.Models = append(cfg.Models, model)
	}
	s := ollamatest.New(cfg)
	if err := s.StartAddr(*addr); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fmt.Println(s.URL())

	sig := make(chan os.Signal, 1)
	signal.Notify(sig, os.Interrupt, syscall.SIGTERM)
	<-sig
	done := make(chan struct{})
	go func() { s.Close(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
	}
}

func split(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}
