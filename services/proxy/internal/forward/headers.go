package forward

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
)

// hopHeaders are connection-level and never forwarded (RFC 9110 7.6.1).
var hopHeaders = map[string]bool{
	"Connection": true, "Proxy-Connection": true, "Keep-Alive": true, "Proxy-Authenticate": true,
	"Proxy-Authorization": true, "Te": true, "Trailer": true, "Transfer-Encoding": true, "Upgrade": true,
}

// dropRequest are end-to-end headers Drover owns: the client's credentials
// are for Drover, the backend's are set per backend; Drover meters bodies,
// so it asks for them uncompressed; the length is the forwarded body's.
var dropRequest = map[string]bool{
	"Authorization": true, "Cookie": true, "Accept-Encoding": true, "Content-Length": true, "Host": true,
}

func copyRequestHeaders(dst, src http.Header) {
	for k, vs := range src {
		if hopHeaders[k] || dropRequest[k] {
			continue
		}
		if dst.Get(k) != "" {
			continue // set by the backend (its own credentials)
		}
		dst[k] = vs
	}
}

func copyHeaders(dst, src http.Header) {
	for k, vs := range src {
		if hopHeaders[k] {
			continue
		}
		dst[k] = vs
	}
}

// SetModel rewrites the top-level "model" field of a JSON object body and
// leaves every other field as the client sent it.
func SetModel(body []byte, model string) ([]byte, error) {
	var doc map[string]json.RawMessage
	if err := json.Unmarshal(body, &doc); err != nil {
		return nil, fmt.Errorf("invalid JSON body: %w", err)
	}
	m, _ := json.Marshal(model)
	doc["model"] = m
	return json.Marshal(doc)
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
