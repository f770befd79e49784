package forward

import (
	"mime"
	"net/http"
)

// A plain body's end is checked by the transport when the backend sent a
// Content-Length or chunked encoding: a connection closed before it is an
// unexpected EOF. A body delimited only by the connection's close (HTTP/1.x
// without either) ends "cleanly" wherever the connection dropped, so for a
// JSON body there the forwarder follows its nesting and takes it as whole
// only once its outermost value closed.

// verifyEnd reports whether resp's body ends only where its connection
// closed and is JSON, so that its shape must say whether it is whole.
func verifyEnd(resp *http.Response) bool {
	if resp.ProtoMajor != 1 || resp.ContentLength >= 0 || len(resp.TransferEncoding) > 0 {
		return false
	}
	if resp.StatusCode < 200 || resp.StatusCode == http.StatusNoContent || resp.StatusCode == http.StatusNotModified ||
		(resp.Request != nil && resp.Request.Method == http.MethodHead) {
		return false // no body to judge
	}
	mt, _, _ := mime.ParseMediaType(resp.Header.Get("Content-Type"))
	return mt == "application/json"
}

// jsonShape follows a JSON document's nesting as its bytes go by: O(1)
// state, one pass over each byte.
type jsonShape struct {
	depth            int
	started          bool
	inString, escape bool
}

func (s *jsonShape) Write(p []byte) {
	for _, b := range p {
		switch {
		case s.inString:
			switch {
			case s.escape:
				s.escape = false
			case b == '\\':
				s.escape = true
			case b == '"':
				s.inString = false
			}
		case b == '"':
			s.inString, s.started = true, true
		case b == '{' || b == '[':
			s.depth++
			s.started = true
		case b == '}' || b == ']':
			s.depth--
		}
	}
}

// whole reports whether the bytes seen hold one whole object, array or
// string.
func (s *jsonShape) whole() bool { return s.started && s.depth == 0 && !s.inString }
