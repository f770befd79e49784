package forward

import (
	"errors"
	"io"
	"net/http"
	"net/textproto"
	"strings"
)

// hopHeaders are connection-level and never forwarded (RFC 9110 7.6.1).
var hopHeaders = map[string]bool{
	"Connection": true, "Proxy-Connection": true, "Keep-Alive": true, "Proxy-Authenticate": true,
	"Proxy-Authorization": true, "Te": true, "Trailer": true, "Transfer-Encoding": true, "Upgrade": true,
}

// dropRequest are end-to-end headers Drover owns: the client's credentials
// (Authorization, or Anthropic's X-Api-Key) are for Drover, the backend's
// are set per backend; Drover meters bodies, so it asks for them
// uncompressed; the length is the forwarded body's.
var dropRequest = map[string]bool{
	"Authorization": true, "X-Api-Key": true, "Cookie": true, "Accept-Encoding": true, "Content-Length": true, "Host": true,
}

// copyRequestHeaders copies the client's end-to-end headers to the
// backend's request, leaving those dst already has (the backend's own
// credentials).
func copyRequestHeaders(dst, src http.Header) {
	conn := src["Connection"]
	for k, vs := range src {
		if hopHeaders[k] || dropRequest[k] || connectionNames(conn, k) {
			continue
		}
		if dst.Get(k) != "" {
			continue
		}
		dst[k] = vs
	}
}

// copyHeaders copies the backend's end-to-end response headers, except
// cookies and CORS headers: a backend's session is not the client's, and
// only Drover decides which origins may read its answers (cors.origins).
func copyHeaders(dst, src http.Header) {
	conn := src["Connection"]
	for k, vs := range src {
		if hopHeaders[k] || connectionNames(conn, k) || k == "Set-Cookie" || strings.HasPrefix(k, "Access-Control-") {
			continue
		}
		dst[k] = vs
	}
}

// connectionNames reports whether the Connection header's values conn
// name key, which makes it hop-by-hop too (RFC 9110 7.6.1), as
// httputil.ReverseProxy treats it.
func connectionNames(conn []string, key string) bool {
	for _, v := range conn {
		for v != "" {
			var name string
			name, v, _ = strings.Cut(v, ",")
			if name = textproto.TrimString(name); name != "" && strings.EqualFold(name, key) {
				return true
			}
		}
	}
	return false
}

// MaxBody bounds a request body; chat requests carry base64 images.
const MaxBody = 256 << 20

// ReadBody reads the whole request body, as a router must to find the model
// (reading it first also avoids golang/go#40747 when forwarding). A body
// over MaxBody is 413; a broken one 400; both written with writeErr, the
// API's own error format.
func ReadBody(w http.ResponseWriter, r *http.Request, writeErr func(http.ResponseWriter, int, string)) ([]byte, bool) {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, MaxBody))
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			writeErr(w, http.StatusRequestEntityTooLarge, "request body too large")
		} else {
			writeErr(w, http.StatusBadRequest, err.Error())
		}
		return nil, false
	}
	return body, true
}
