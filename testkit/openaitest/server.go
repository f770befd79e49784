package openaitest

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Flavor is the server the fake imitates where they differ.
type Flavor string

const (
	// VLLM reports usage only, and only when asked in streams.
	VLLM Flavor = "vllm"
	// LlamaCpp adds llama.cpp's timings beside usage.
	LlamaCpp Flavor = "llamacpp"
)

// Model is one model the server serves.
type Model struct {
	ID string
	// Status, when set, is llama.cpp router mode's per-model state in
	// /v1/models ("loaded", "unloaded", "loading").
	Status    string
	Embedding bool // serves /v1/embeddings
	Dims      int  // embedding size; default 16
	Rerank    bool // serves /v1/rerank
	Reasoning bool // streams half of each reply as reasoning_content
}

// Config sets up a Server. The zero value is a vLLM with DefaultModels.
type Config struct {
	Flavor     Flavor        // default VLLM
	Models     []Model       // nil: DefaultModels()
	Chunks     int           // content tokens per reply; default DefaultChunks
	ChunkDelay time.Duration // pause before each content chunk
	// NoUsage reports no usage and no timings at all.
	NoUsage bool
	// APIKey, when set, is required as "Authorization: Bearer <key>".
	APIKey string
}

// DefaultChunks is the reply length when nothing else sets it.
const DefaultChunks = 10

// PerMessageTokens is added to prompt_tokens per message, prompt, input or
// document.
const PerMessageTokens = 4

// ToolCallTokens is completion_tokens for a reply that calls a tool.
const ToolCallTokens = 7

// DefaultModels is a chat model, a reasoning model, an embedding model and
// a rerank model.
func DefaultModels() []Model {
	return []Model{
		{ID: "tiny"},
		{ID: "tiny-reason", Reasoning: true},
		{ID: "tiny-embed", Embedding: true, Dims: 16},
		{ID: "tiny-rerank", Rerank: true},
	}
}

// Server is a fake OpenAI-compatible server. It is an http.Handler; Start
// serves it on a loopback port. All methods are safe for concurrent use.
type Server struct {
	cfg    Config // immutable after New
	models map[string]Model
	done   chan struct{} // closed by Close: releases hangs
	ids    atomic.Int64

	failure atomic.Pointer[failure]

	promptTokens, completionTokens, embedTokens, completed, reported atomic.Int64

	mu       sync.Mutex // guards requests, last
	requests map[string]int64
	last     map[string][]byte

	lmu    sync.Mutex // guards addr, srv, closed
	addr   string
	srv    *http.Server
	closed bool
	served chan struct{}
}

type failure struct {
	status int
	msg    string
}

// New builds a Server from cfg.
func New(cfg Config) *Server {
	if cfg.Flavor == "" {
		cfg.Flavor = VLLM
	}
	if cfg.Models == nil {
		cfg.Models = DefaultModels()
	}
	if cfg.Chunks <= 0 {
		cfg.Chunks = DefaultChunks
	}
	s := &Server{cfg: cfg, models: map[string]Model{}, done: make(chan struct{}), requests: map[string]int64{}, last: map[string][]byte{}}
	for _, m := range cfg.Models {
		if m.Dims <= 0 {
			m.Dims = 16
		}
		s.models[m.ID] = m
	}
	return s
}

// Start serves on 127.0.0.1 on a free port.
func (s *Server) Start() error {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return fmt.Errorf("openaitest: listen: %w", err)
	}
	s.lmu.Lock()
	defer s.lmu.Unlock()
	if s.closed {
		ln.Close()
		return errors.New("openaitest: server closed")
	}
	s.addr = ln.Addr().String()
	s.srv = &http.Server{Handler: s, ReadHeaderTimeout: 10 * time.Second}
	s.served = make(chan struct{})
	go func(srv *http.Server, done chan struct{}) {
		defer close(done)
		srv.Serve(ln) //nolint:errcheck // ends with Close
	}(s.srv, s.served)
	return nil
}

// URL is http://ADDR of the running server ("" before Start).
func (s *Server) URL() string {
	s.lmu.Lock()
	defer s.lmu.Unlock()
	if s.addr == "" {
		return ""
	}
	return "http://" + s.addr
}

// Close stops serving and releases every hanging request.
func (s *Server) Close() {
	s.lmu.Lock()
	if s.closed {
		s.lmu.Unlock()
		return
	}
	s.closed = true
	close(s.done)
	srv, served := s.srv, s.served
	s.lmu.Unlock()
	if srv != nil {
		srv.Close()
		<-served
	}
}

// SetFailure makes every inference request answer status with an error
// object carrying msg; status 0 clears it.
func (s *Server) SetFailure(status int, msg string) {
	if status == 0 {
		s.failure.Store(nil)
		return
	}
	if msg == "" {
		msg = http.StatusText(status)
	}
	s.failure.Store(&failure{status, msg})
}

// Requests reports how many requests hit path.
func (s *Server) Requests(path string) int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.requests[path]
}

// LastBody returns the body of the last request to path, as received.
func (s *Server) LastBody(path string) []byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.last[path]
}

// Counters is a snapshot of the token and outcome totals.
type Counters struct {
	// PromptTokens and CompletionTokens sum chat and completion replies
	// that completed, whether or not their usage was sent.
	PromptTokens, CompletionTokens int64
	// EmbedTokens sums prompt_tokens of embeddings and rerank answers.
	EmbedTokens int64
	// Completed counts finished chat and completion replies; Reported
	// those whose usage (or timings) went on the wire.
	Completed, Reported int64
}

// Counters returns the totals so far.
func (s *Server) Counters() Counters {
	return Counters{
		PromptTokens: s.promptTokens.Load(), CompletionTokens: s.completionTokens.Load(),
		EmbedTokens: s.embedTokens.Load(), Completed: s.completed.Load(), Reported: s.reported.Load(),
	}
}

// ServeHTTP routes like vLLM's and llama.cpp's servers.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	s.requests[r.URL.Path]++
	s.mu.Unlock()
	if s.cfg.APIKey != "" && r.Header.Get("Authorization") != "Bearer "+s.cfg.APIKey {
		writeError(w, http.StatusUnauthorized, "Invalid API Key", "authentication_error")
		return
	}
	var hf *Fault
	if h := r.Header.Get(FaultHeader); h != "" {
		hf = &Fault{}
		if json.Unmarshal([]byte(h), hf) != nil {
			hf = nil
		}
	}
	get, post := r.Method == http.MethodGet, r.Method == http.MethodPost
	switch {
	case r.URL.Path == "/health" && get:
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	case r.URL.Path == "/v1/models" && get:
		if s.applyFault(w, r, hf) {
			s.listModels(w)
		}
	case post && (r.URL.Path == "/v1/chat/completions" || r.URL.Path == "/v1/completions" ||
		r.URL.Path == "/v1/embeddings" || r.URL.Path == "/v1/rerank"):
		s.inference(w, r, hf)
	default:
		writeError(w, http.StatusNotFound, "File Not Found", "not_found_error")
	}
}

func (s *Server) listModels(w http.ResponseWriter) {
	type status struct {
		Value string `json:"value"`
	}
	type entry struct {
		ID      string  `json:"id"`
		Object  string  `json:"object"`
		Created int64   `json:"created"`
		OwnedBy string  `json:"owned_by"`
		Status  *status `json:"status,omitempty"`
	}
	data := make([]entry, 0, len(s.cfg.Models))
	for _, m := range s.cfg.Models {
		e := entry{ID: m.ID, Object: "model", Created: 1700000000, OwnedBy: string(s.cfg.Flavor)}
		if m.Status != "" {
			e.Status = &status{m.Status}
		}
		data = append(data, e)
	}
	writeJSON(w, http.StatusOK, map[string]any{"object": "list", "data": data})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	b, _ := json.Marshal(v)
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	w.Write(b) //nolint:errcheck // the client may be gone
}

// writeError writes the OpenAI error object, with llama.cpp's numeric code.
func writeError(w http.ResponseWriter, status int, msg, typ string) {
	writeJSON(w, status, map[string]any{"error": errorBody(status, msg, typ)})
}

func errorBody(status int, msg, typ string) map[string]any {
	if typ == "" {
		switch {
		case status == http.StatusNotFound:
			typ = "not_found_error"
		case status == http.StatusNotImplemented:
			typ = "not_supported_error"
		case status >= 500:
			typ = "server_error"
		default:
			typ = "invalid_request_error"
		}
	}
	return map[string]any{"message": msg, "type": typ, "param": nil, "code": status}
}

// words counts whitespace-separated words.
func words(s string) int { return len(strings.Fields(s)) }
