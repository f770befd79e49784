// Package backend holds one inference server as Drover sees it: where it is,
// how to talk to it (a pooled HTTP client sized for a proxy), and whether it
// is healthy (a breaker fed by real traffic and by background probes).
package backend

import (
	"context"
	"net"
	"net/http"
	"time"

	"github.com/droverhq/drover/pkg/config"
	"github.com/droverhq/drover/services/proxy/internal/dialect"
	"github.com/droverhq/drover/services/proxy/internal/dialect/ollama"
	"github.com/droverhq/drover/services/proxy/internal/dialect/openai"
)

// Backend is one configured server. Its fields are fixed after New; Health
// carries the only mutable state.
type Backend struct {
	Name           string
	URL            string
	Dialect        dialect.Dialect // what kind of server it is
	APIKey         config.Secret
	MaxConcurrency int // per model
	Weight         int
	Client         *http.Client
	Health         *Health
}

// New builds a backend from its config entry; the routing default
// max_concurrency applies when the entry sets none. The entry's type is
// read here and nowhere else: it chooses the backend's dialect.
func New(c config.Backend, r config.Routing, h config.Health) *Backend {
	capacity := c.MaxConcurrency
	if capacity == 0 {
		capacity = r.MaxConcurrency
	}
	return &Backend{
		Name:           c.Name,
		URL:            c.URL,
		Dialect:        dialectOf(c.Type),
		APIKey:         c.APIKey,
		MaxConcurrency: capacity,
		Weight:         c.Weight,
		Client:         &http.Client{Transport: NewTransport(r.ConnectTimeout, r.HeaderTimeout)},
		Health:         NewHealth(h),
	}
}

// dialectOf is the dialect for a configured backend type: "openai", or
// "ollama" (the default).
func dialectOf(typ string) dialect.Dialect {
	if typ == "openai" {
		return openai.Dialect{}
	}
	return ollama.Dialect{}
}

// Serves reports whether b's dialect serves every route given (see
// dialect.Dialect.Serves); an empty route asks nothing.
func (b *Backend) Serves(routes ...string) bool {
	for _, r := range routes {
		if r != "" && !b.Dialect.Serves(r) {
			return false
		}
	}
	return true
}

// NewTransport is sized for a proxy: Go's default keeps two idle connections
// per host, which churns connections under any real concurrency.
func NewTransport(connect, header time.Duration) *http.Transport {
	d := &net.Dialer{Timeout: connect, KeepAlive: 30 * time.Second}
	return &http.Transport{
		Proxy:                 http.ProxyFromEnvironment,
		DialContext:           d.DialContext,
		MaxIdleConns:          2048,
		MaxIdleConnsPerHost:   1024,
		IdleConnTimeout:       90 * time.Second,
		ResponseHeaderTimeout: header,
		// Bodies pass through as the backend sent them.
		DisableCompression: true,
		ForceAttemptHTTP2:  false,
	}
}

// NewRequest builds a request to path on the backend with its credentials.
func (b *Backend) NewRequest(ctx context.Context, method, path string, body interface {
	Read([]byte) (int, error)
}) (*http.Request, error) {
	req, err := http.NewRequestWithContext(ctx, method, b.URL+path, body)
	if err != nil {
		return nil, err
	}
	if b.APIKey != "" {
		req.Header.Set("Authorization", "Bearer "+b.APIKey.Reveal())
	}
	return req, nil
}
