package main

import (
	"net/http"
	"net/http/httptest"
	"testing"
	"time"
)

func TestCheck(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/ok":
			w.Write([]byte("Ollama is running")) //nolint:errcheck
		case "/slow":
			<-r.Context().Done() // answers only after the check has given up
		default:
			w.WriteHeader(http.StatusServiceUnavailable)
		}
	}))
	defer srv.Close()
	for _, tc := range []struct {
		path string
		ok   bool
	}{{"/ok", true}, {"/health", false}, {"/slow", false}} {
		err := check(srv.URL+tc.path, 100*time.Millisecond)
		if (err == nil) != tc.ok {
			t.Errorf("%s: err %v, want ok=%v", tc.path, err, tc.ok)
		}
	}
	if err := check("http://127.0.0.1:1/", 100*time.Millisecond); err == nil {
		t.Error("closed port: want an error")
	}
}
