// Package keepalive is the HTTP/1.1 transport drover-bench uses on both
// sides of a measurement: the load generator's client and the bare proxy's
// backend pool.
package keepalive

import (
	"net"
	"net/http"
	"time"
)

// Transport returns a keep-alive transport whose idle pool holds enough
// connections per host that 64 (or more) concurrent requests never churn
// connections; Go's default of 2 would measure dialing, not proxying.
func Transport() *http.Transport {
	return &http.Transport{
		Proxy:               nil,
		DialContext:         (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		MaxIdleConns:        1024,
		MaxIdleConnsPerHost: 1024,
		IdleConnTimeout:     90 * time.Second,
		DisableCompression:  true,
		ForceAttemptHTTP2:   false,
	}
}
