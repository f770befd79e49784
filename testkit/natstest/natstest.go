// Package natstest runs a real embedded NATS server with JetStream for tests:
// random port, a temporary store directory, and Stop/Restart on the same
// port and store so that tests can take NATS away and bring it back.
package natstest

import (
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"

	"github.com/droverhq/drover/testkit/freeport"
)

// Server is one embedded NATS server owned by a test.
type Server struct {
	t    testing.TB
	opts server.Options
	srv  *server.Server
}

// Start starts a JetStream-enabled server and stops it when the test ends.
func Start(t testing.TB) *Server {
	t.Helper()
	s := &Server{t: t, opts: server.Options{
		Host:      "127.0.0.1",
		Port:      freePort(t),
		JetStream: true,
		StoreDir:  t.TempDir(),
		NoLog:     true,
		NoSigs:    true,
	}}
	s.start()
	t.Cleanup(s.Stop)
	return s
}

// URL is the client URL, stable across Restart.
func (s *Server) URL() string { return fmt.Sprintf("nats://127.0.0.1:%d", s.opts.Port) }

// Stop shuts the server down; it is safe to call twice.
func (s *Server) Stop() {
	if s.srv == nil {
		return
	}
	s.srv.Shutdown()
	s.srv.WaitForShutdown()
	s.srv = nil
}

// Restart starts the server again on the same port with the same store, so
// streams and their messages survive.
func (s *Server) Restart() {
	s.t.Helper()
	s.Stop()
	s.start()
}

func (s *Server) start() {
	s.t.Helper()
	opts := s.opts
	srv, err := server.NewServer(&opts)
	if err != nil {
		s.t.Fatalf("natstest: %v", err)
	}
	go srv.Start()
	if !srv.ReadyForConnections(10 * time.Second) {
		s.t.Fatalf("natstest: server not ready on port %d", s.opts.Port)
	}
	s.srv = srv
}

func freePort(t testing.TB) int {
	t.Helper()
	p, err := freeport.Port()
	if err != nil {
		t.Fatalf("natstest: %v", err)
	}
	return p
}
