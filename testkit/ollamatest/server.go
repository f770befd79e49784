package ollamatest

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/droverhq/drover/pkg/jsonw"
)

// Server is a fake Ollama. It is an http.Handler; Start serves it on a
// loopback port. All methods are safe for concurrent use.
type Server struct {
	cfg     Config // immutable after New
	catalog atomic.Pointer[catalog]
	stats   stats
	done    chan struct{} // closed by Close: releases hangs and delays

	// runtime knobs, read on the hot path
	failure    atomic.Pointer[failure]
	hangGate   atomic.Pointer[chan struct{}] // non-nil while SetHang(true)
	chunks     atomic.Int64
	chunkDelay atomic.Int64
	latency    atomic.Int64
	waiting    atomic.Int64 // requests queued for a Parallel slot
	// cachedPrompt sums the cached prompt tokens of counted replies (prefixcache.go).
	cachedPrompt atomic.Int64

	mu     sync.Mutex // guards catalog writes, loaded, blobs
	loaded map[string]*loadedModel
	blobs  map[string]bool

	aliases aliasStore // server-side aliases (aliases.go)

	lmu       sync.Mutex // guards addr, srv, serveDone, closeOnce
	addr      string
	srv       *http.Server
	serveDone chan struct{}
	closed    bool
}

type failure struct {
	status int
	msg    string
}

// New builds a Server from cfg (see Config for defaults).
func New(cfg Config) *Server {
	cfg.withDefaults()
	s := &Server{cfg: cfg, done: make(chan struct{}), loaded: map[string]*loadedModel{}, blobs: map[string]bool{}}
	s.stats.routes = make([]atomic.Int64, len(routeNames))
	s.chunks.Store(int64(cfg.Chunks))
	s.chunkDelay.Store(int64(cfg.ChunkDelay))
	s.latency.Store(int64(cfg.FirstByteLatency))
	now := time.Now()
	byKey := map[string]*entry{}
	for i, m := range cfg.Models {
		// Older entries first, so /api/tags lists them in config order reversed, like real installs.
		e := newEntry(m, now.Add(time.Duration(i-len(cfg.Models))*time.Second))
		byKey[e.name.key()] = e
	}
	s.catalog.Store(newCatalog(byKey))
	s.SetLoaded(cfg.Loaded...)
	return s
}

// ServeHTTP routes like Ollama's gin router; unknown routes get gin's 404.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	path := r.URL.Path
	route := path
	if strings.HasPrefix(path, "/api/blobs/") {
		route = "/api/blobs"
	}
	i, ok := routeIndex[route]
	if !ok {
		i = routeIndex["other"]
	}
	s.stats.routes[i].Add(1)

	if g := s.hangGate.Load(); g != nil {
		if !s.hang(r, *g) {
			return
		}
	}
	if path == "/v1/messages" {
		s.serveMessages(w, r) // Anthropic's API, errors in its shape (anthropic.go)
		return
	}
	switch path { // OpenAI's Responses and images APIs (responses.go, images.go); status and aliases (aliases.go)
	case "/api/status":
		s.serveStatus(w, r)
		return
	case "/api/experimental/aliases":
		s.serveAliases(w, r)
		return
	case "/v1/responses":
		s.serveResponses(w, r)
		return
	case "/v1/images/generations", "/v1/images/edits":
		s.serveImages(w, r, path == "/v1/images/edits")
		return
	}
	if strings.HasPrefix(path, "/v1/") && s.serveOpenAI(w, r) {
		return // OpenAI routes answer faults in OpenAI's error shape
	}
	if h := r.Header.Get(FaultHeader); h != "" {
		var f Fault
		if err := json.Unmarshal([]byte(h), &f); err == nil && !s.applyFault(w, r, &f) {
			return
		}
	}

	m := r.Method
	get, post := m == http.MethodGet || m == http.MethodHead, m == http.MethodPost
	switch {
	case path == "/" && get:
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		if m == http.MethodGet {
			io.WriteString(w, "Ollama is running")
		}
	case path == "/api/version" && get:
		writeJSON(w, http.StatusOK, map[string]string{"version": s.cfg.Version})
	case path == "/api/tags" && get:
		writeRaw(w, http.StatusOK, s.catalog.Load().tags)
	case path == "/api/ps" && m == http.MethodGet:
		writeJSON(w, http.StatusOK, map[string]any{"models": s.psModels()})
	case path == "/api/show" && post:
		s.handleShow(w, r)
	case path == "/api/chat" && post:
		s.handleChat(w, r)
	case path == "/api/generate" && post:
		s.handleGenerate(w, r)
	case path == "/api/embed" && post:
		s.handleEmbed(w, r)
	case path == "/api/embeddings" && post:
		s.handleEmbeddings(w, r)
	case path == "/api/pull" && post:
		s.handlePull(w, r)
	case path == "/api/push" && post:
		s.handlePush(w, r)
	case path == "/api/create" && post:
		s.handleCreate(w, r)
	case path == "/api/copy" && post:
		s.handleCopy(w, r)
	case path == "/api/delete" && m == http.MethodDelete:
		s.handleDelete(w, r)
	case route == "/api/blobs" && (m == http.MethodHead || post):
		s.handleBlob(w, r)
	default:
		if s.serveOpenAI(w, r) {
			return
		}
		w.Header().Set("Content-Type", "text/plain")
		if allow := allowed(route); allow != "" {
			w.Header().Set("Allow", allow)
			w.WriteHeader(http.StatusMethodNotAllowed)
			io.WriteString(w, "405 method not allowed")
			return
		}
		w.WriteHeader(http.StatusNotFound)
		io.WriteString(w, "404 page not found")
	}
}

// allowed is gin's Allow header for a known path hit with the wrong method.
func allowed(route string) string {
	switch route {
	case "/", "/api/version", "/api/tags":
		return "HEAD, GET"
	case "/api/ps", "/v1/models":
		return "GET"
	case "/api/delete":
		return "DELETE"
	case "/api/blobs":
		return "HEAD, POST"
	case "/api/show", "/api/chat", "/api/generate", "/api/embed", "/api/embeddings", "/api/pull",
		"/api/push", "/api/create", "/api/copy", "/v1/chat/completions", "/v1/completions", "/v1/embeddings":
		return "POST"
	}
	return ""
}

// ollamaTypes renames the fake's request types to the ones Ollama's decoder
// names in its errors.
var ollamaTypes = strings.NewReplacer("ollamatest.message", "api.Message", "ollamatest.options", "map[string]interface {}")

// decode reads a JSON body like gin's ShouldBindJSON and answers 400 with
// Ollama's message when it fails.
// typeName is the Ollama request type named in JSON type errors.
func decode(w http.ResponseWriter, r *http.Request, v any, typeName string) bool {
	err := json.NewDecoder(r.Body).Decode(v)
	var te *json.UnmarshalTypeError
	if errors.As(err, &te) && te.Struct != "" {
		msg := strings.Replace(err.Error(), "field "+te.Struct+".", "field "+typeName+".", 1)
		msg = ollamaTypes.Replace(msg)
		writeError(w, http.StatusBadRequest, msg)
		return false
	}
	switch {
	case errors.Is(err, io.EOF):
		writeError(w, http.StatusBadRequest, "missing request body")
		return false
	case err != nil:
		writeError(w, http.StatusBadRequest, err.Error())
		return false
	}
	return true
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		writeError(w, http.StatusInternalServerError, err.Error())
		return
	}
	writeRaw(w, status, b)
}

// writeRaw sends a JSON body the way gin's c.JSON does (no trailing newline).
func writeRaw(w http.ResponseWriter, status int, b []byte) {
	h := w.Header()
	if h.Get("Content-Type") == "" {
		h.Set("Content-Type", "application/json; charset=utf-8")
	}
	w.WriteHeader(status)
	w.Write(b)
}

func writeError(w http.ResponseWriter, status int, msg string) {
	b := append([]byte(`{"error":`), jsonw.AppendString(nil, msg)...)
	writeRaw(w, status, append(b, '}'))
}

// Start serves on 127.0.0.1 on a free port.
func (s *Server) Start() error { return s.StartAddr("127.0.0.1:0") }

// StartAddr serves on addr (host:port).
func (s *Server) StartAddr(addr string) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("ollamatest: listen on %s: %w", addr, err)
	}
	s.lmu.Lock()
	defer s.lmu.Unlock()
	if s.closed {
		ln.Close()
		return errors.New("ollamatest: server closed")
	}
	s.addr = ln.Addr().String()
	s.serveLocked(ln)
	return nil
}

func (s *Server) serveLocked(ln net.Listener) {
	srv := &http.Server{Handler: s, ReadHeaderTimeout: 10 * time.Second}
	done := make(chan struct{})
	s.srv, s.serveDone = srv, done
	go func() {
		defer close(done)
		srv.Serve(ln)
	}()
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

// Down stops serving: closes the listener (connections are refused) and
// every open connection, as if the process died. Up brings it back on the
// same address.
func (s *Server) Down() {
	s.lmu.Lock()
	srv, done := s.srv, s.serveDone
	s.srv, s.serveDone = nil, nil
	s.lmu.Unlock()
	if srv != nil {
		srv.Close()
		<-done
	}
}

// Up serves again on the address of the last Start after Down.
func (s *Server) Up() error {
	s.lmu.Lock()
	defer s.lmu.Unlock()
	if s.closed {
		return errors.New("ollamatest: server closed")
	}
	if s.srv != nil {
		return nil
	}
	var ln net.Listener
	var err error
	for range 50 { // the old socket may linger for a moment
		if ln, err = net.Listen("tcp", s.addr); err == nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		return fmt.Errorf("ollamatest: listen again on %s: %w", s.addr, err)
	}
	s.serveLocked(ln)
	return nil
}

// IsUp reports whether the server is accepting connections.
func (s *Server) IsUp() bool {
	s.lmu.Lock()
	defer s.lmu.Unlock()
	return s.srv != nil
}

// Close stops serving for good and releases every hanging request.
func (s *Server) Close() {
	s.lmu.Lock()
	if !s.closed {
		s.closed = true
		close(s.done)
	}
	s.lmu.Unlock()
	s.Down()
}
