package dashboard

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

func TestWantsHTML(t *testing.T) {
	cases := map[string]bool{
		"": false, "*/*": false, "application/json": false, "application/x-ndjson": false,
		"text/html": true, "TEXT/HTML": true, "text/html;q=0.5": true,
		"text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8": true,
		"text/html;q=0": false, "text/html;q=0.0, */*": false, "text/plain": false, "garbage;;": false,
	}
	for accept, want := range cases {
		if got := WantsHTML(accept); got != want {
			t.Errorf("WantsHTML(%q) = %v, want %v", accept, got, want)
		}
	}
}

func TestMiddleware(t *testing.T) {
	next := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("next " + r.URL.Path)) })
	h := Middleware(next)
	cases := []struct {
		method, path, accept string
		code                 int
		body                 string
	}{
		{"GET", "/", "text/html", 200, "<title>Drover</title>"},
		{"HEAD", "/", "text/html", 200, ""},
		{"GET", "/", "*/*", 200, "next /"},
		{"POST", "/", "text/html", 200, "next /"},
		{"GET", "/api/tags", "text/html", 200, "next /api/tags"},
		{"GET", "/dashboard/app.js", "", 200, "EventSource"},
		{"GET", "/dashboard/", "", 200, "next /dashboard/"},
		{"GET", "/dashboard/missing.css", "", 404, ""},
	}
	for _, c := range cases {
		req := httptest.NewRequest(c.method, c.path, nil)
		req.Header.Set("Accept", c.accept)
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if rec.Code != c.code || !strings.Contains(rec.Body.String(), c.body) || (c.method == "HEAD" && rec.Body.Len() != 0) {
			t.Errorf("%s %s (Accept %q): %d %.60q", c.method, c.path, c.accept, rec.Code, rec.Body.String())
		}
		// The page may be opened as /?api_key=...: nothing it loads may
		// carry that URL on as a Referer.
		ours := !strings.HasPrefix(rec.Body.String(), "next ") && rec.Code == 200
		if got := rec.Header().Get("Referrer-Policy"); ours && got != "no-referrer" {
			t.Errorf("%s %s: Referrer-Policy %q", c.method, c.path, got)
		}
	}
}
