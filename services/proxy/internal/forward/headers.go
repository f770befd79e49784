package forward

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/textproto"
	"os"
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
	for k, vs := range src {
		if relayed(src, k) {
			dst[k] = vs
		}
	}
}

// relayed reports whether copyHeaders passes src's header k on.
func relayed(src http.Header, k string) bool {
	return !hopHeaders[k] && !connectionNames(src["Connection"], k) && k != "Set-Cookie" && !strings.HasPrefix(k, "Access-Control-")
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
// over MaxBody (or the server's smaller limit) is 413, one that did not
// arrive in time 408, a broken one 400; each written with writeErr, the
// API's own error format. A body whose Content-Length is known is read
// into a buffer of that size, so it costs its size once, not the doublings
// of a growing one.
func ReadBody(w http.ResponseWriter, r *http.Request, writeErr func(http.ResponseWriter, int, string)) ([]byte, bool) {
	size, limit := 512, int64(MaxBody)
	if l, ok := r.Body.(interface{ Limit() int64 }); ok {
		limit = min(limit, l.Limit())
	}
	if r.ContentLength > 0 && r.ContentLength <= limit {
		size = int(r.ContentLength) + 1 // +1: room to read the end without growing
	}
	body, err := readAll(http.MaxBytesReader(w, r.Body, MaxBody), size, int(limit)+1)
	if err != nil {
		status, msg := BodyError(err)
		writeErr(w, status, msg)
		return nil, false
	}
	return body, true
}

// readAll is io.ReadAll starting from a buffer of size bytes and doubling
// it, never past most: a body of unknown length (chunked) costs at most
// about one and a half times the limit while it is read, not the
// geometric series of a growing slice.
func readAll(r io.Reader, size, most int) ([]byte, error) {
	b := make([]byte, 0, size)
	for {
		n, err := r.Read(b[len(b):cap(b)])
		b = b[:len(b)+n]
		if err == io.EOF {
			return b, nil
		}
		if err != nil {
			return b, err
		}
		if len(b) == cap(b) {
			// Doubling, but straight to most when the next doubling would
			// pass it, so the last buffer is not a near-copy of the limit.
			next := 2 * cap(b)
			if 2*next > most {
				next = most
			}
			grown := make([]byte, len(b), max(next, cap(b)+512))
			copy(grown, b)
			b = grown
		}
	}
}

// BodyError is the status and message for an error reading a request body:
// 413 over a size limit, 408 past a read deadline, else 400.
func BodyError(err error) (int, string) {
	var tooBig *http.MaxBytesError
	switch {
	case errors.As(err, &tooBig):
		return http.StatusRequestEntityTooLarge, fmt.Sprintf("request body too large: the limit is %d bytes", tooBig.Limit)
	case errors.Is(err, os.ErrDeadlineExceeded):
		return http.StatusRequestTimeout, err.Error()
	}
	return http.StatusBadRequest, err.Error()
}
