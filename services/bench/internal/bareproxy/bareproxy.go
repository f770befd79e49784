// Package bareproxy is the baseline drover-bench compares Drover against: a
// plain httputil.ReverseProxy to one backend, with the two changes any
// serious proxy makes: a backend idle pool sized for the load (Go's default
// keeps 2 idle connections per host and churns under 64 concurrent
// requests), and the request body read in full before forwarding, as a
// router must do anyway to find the model (it also avoids the rare "use of
// closed network connection" of golang/go#40747).
package bareproxy

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"time"

	"github.com/droverhq/drover/services/bench/internal/keepalive"
)

// Proxy is a reverse proxy to one backend; it is an http.Handler.
type Proxy struct {
	rp *httputil.ReverseProxy
	tr *http.Transport
}

// New returns a reverse proxy to backend.
func New(backend *url.URL) *Proxy {
	tr := keepalive.Transport()
	rp := &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(backend)
			pr.Out.Host = pr.In.Host
		},
		Transport: tr,
		// Streams are flushed chunk by chunk, as a streaming router must.
		FlushInterval: -1,
	}
	return &Proxy{rp: rp, tr: tr}
}

func (p *Proxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(r.Body)
	r.Body.Close()
	if err != nil {
		http.Error(w, "reading request body: "+err.Error(), http.StatusBadRequest)
		return
	}
	r.Body = io.NopCloser(bytes.NewReader(body))
	r.ContentLength = int64(len(body))
	p.rp.ServeHTTP(w, r)
}

// CloseIdleConnections closes the idle backend connections.
func (p *Proxy) CloseIdleConnections() { p.tr.CloseIdleConnections() }

// Server is a running bare proxy.
type Server struct {
	URL   string // base URL, http://127.0.0.1:PORT
	proxy *Proxy
	srv   *http.Server
	done  chan error // receives Serve's result once
}

// Start listens on addr (use "127.0.0.1:0" for any free port) and serves a
// proxy to backend until Close.
func Start(addr string, backend *url.URL) (*Server, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("bare proxy listening on %s: %w", addr, err)
	}
	p := New(backend)
	s := &Server{
		URL:   "http://" + ln.Addr().String(),
		proxy: p,
		srv:   &http.Server{Handler: p, ReadHeaderTimeout: 10 * time.Second},
		done:  make(chan error, 1),
	}
	go func() { s.done <- s.srv.Serve(ln) }()
	return s, nil
}

// Close stops the proxy, waiting up to the context's deadline for requests
// in flight, and closes its backend connections.
func (s *Server) Close(ctx context.Context) error {
	err := s.srv.Shutdown(ctx)
	if serr := <-s.done; !errors.Is(serr, http.ErrServerClosed) && err == nil {
		err = fmt.Errorf("bare proxy serving: %w", serr)
	}
	s.proxy.CloseIdleConnections()
	return err
}
