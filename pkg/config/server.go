package config

import "time"

// Server bounds what one client connection, and one backend stream, may
// cost the proxy (docs/hostile.md says why each default is what it is and
// what was measured).
type Server struct {
	// MaxBodyBytes bounds a request body (default 32 MiB: a long chat with
	// a few base64 images). Larger bodies are refused with 413 before they
	// are read when Content-Length says so, after MaxBodyBytes otherwise.
	MaxBodyBytes int64 `yaml:"max_body_bytes"`
	// MaxBlobBytes bounds a model blob upload (POST /api/blobs/:digest),
	// which is streamed to the backends, never held (default 256 GiB).
	MaxBlobBytes int64 `yaml:"max_blob_bytes"`
	// MaxHeaderBytes bounds a request's header block (default 64 KiB);
	// larger heads get Go's 431.
	MaxHeaderBytes int `yaml:"max_header_bytes"`
	// BodyTimeout bounds reading a request body, from the end of its head
	// (default 60s); a client still sending then gets 408 and the
	// connection is closed.
	BodyTimeout time.Duration `yaml:"body_timeout"`
	// ReadHeaderTimeout bounds reading a request's head (default 10s).
	ReadHeaderTimeout time.Duration `yaml:"read_header_timeout"`
	// IdleTimeout closes a keep-alive connection idle this long (default
	// 120s).
	IdleTimeout time.Duration `yaml:"idle_timeout"`
	// MaxEventBytes bounds one server-sent event from a backend, held
	// whole while it is filtered (default 16 MiB); a longer one ends the
	// stream as failed.
	MaxEventBytes int `yaml:"max_event_bytes"`
}

// DefaultServer is the server section's defaults.
func DefaultServer() Server {
	return Server{
		MaxBodyBytes:      32 << 20,
		MaxBlobBytes:      256 << 30,
		MaxHeaderBytes:    64 << 10,
		BodyTimeout:       60 * time.Second,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       120 * time.Second,
		MaxEventBytes:     16 << 20,
	}
}

// validate reports the server section's problems under their keys.
func (s Server) validate(bad func(key, format string, args ...any)) {
	for key, v := range map[string]int64{
		"server.max_body_bytes":   s.MaxBodyBytes,
		"server.max_blob_bytes":   s.MaxBlobBytes,
		"server.max_header_bytes": int64(s.MaxHeaderBytes),
		"server.max_event_bytes":  int64(s.MaxEventBytes),
	} {
		if v < 1024 {
			bad(key, "must be at least 1024 bytes, got %d", v)
		}
	}
	for key, v := range map[string]time.Duration{
		"server.body_timeout":        s.BodyTimeout,
		"server.read_header_timeout": s.ReadHeaderTimeout,
		"server.idle_timeout":        s.IdleTimeout,
	} {
		if v <= 0 {
			bad(key, "must be positive, got %v", v)
		}
	}
}
