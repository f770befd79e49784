package server

import (
	"io"
	"net/http"
	"strings"
	"testing"
)

func (e *mixedEnv) call(t *testing.T, method, url, body string) (int, http.Header, string) {
	t.Helper()
	req, _ := http.NewRequestWithContext(t.Context(), method, url, strings.NewReader(body))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header, string(b)
}

// /api/status merges the backends' answers; Ollama's server-side aliases
// are written to every backend and listed merged.
func TestStatusAndServerAliasesOverTheFleet(t *testing.T) {
	e := newMixedEnv(t, 2, nil, nil)
	const aliases = "/api/experimental/aliases"
	const jsonCT = "application/json; charset=utf-8"
	check := func(name string, status int, hdr http.Header, body string, wantStatus int, want string) {
		t.Helper()
		if status != wantStatus || hdr.Get("Content-Type") != jsonCT || body != want {
			t.Fatalf("%s: got %d %q %s, want %d %s", name, status, hdr.Get("Content-Type"), body, wantStatus, want)
		}
	}
	s, h, b := e.call(t, "GET", e.url+"/api/status", "")
	check("status", s, h, b, 200, `{"cloud":{"disabled":false,"source":"none"}}`)

	// A write goes to every backend.
	s, h, b = e.call(t, "POST", e.url+aliases, `{"alias":"Foo:latest","target":"tiny"}`)
	check("create", s, h, b, 200, `{"alias":"Foo","target":"tiny"}`)
	for _, f := range e.ollama {
		s, h, b = e.call(t, "GET", f.URL()+aliases, "")
		check("backend list", s, h, b, 200, `{"aliases":[{"alias":"Foo","target":"tiny"}]}`)
	}
	// Refused alike by every backend: their answer.
	s, h, b = e.call(t, "POST", e.url+aliases, `{"alias":"tiny2","target":"tiny"}`)
	check("conflict", s, h, b, 400, `{"error":"alias \"tiny2\" conflicts with existing model"}`)

	// Refused by one backend (the name is a model there): refused for the
	// fleet and undone where it was made.
	if s, _, b := e.call(t, "POST", e.ollama[0].URL()+"/api/copy", `{"source":"tiny","destination":"solo"}`); s != 200 {
		t.Fatalf("copy: %d %s", s, b)
	}
	s, h, b = e.call(t, "POST", e.url+aliases, `{"alias":"solo","target":"tiny"}`)
	check("refused by one", s, h, b, 400, `{"error":"alias \"solo\" conflicts with existing model"}`)
	s, h, b = e.call(t, "GET", e.ollama[1].URL()+aliases, "")
	check("undone", s, h, b, 200, `{"aliases":[{"alias":"Foo","target":"tiny"}]}`)

	// The list is every backend's, merged and sorted.
	e.call(t, "POST", e.ollama[1].URL()+aliases, `{"alias":"bar","target":"tiny2"}`)
	s, h, b = e.call(t, "GET", e.url+aliases, "")
	check("merged list", s, h, b, 200, `{"aliases":[{"alias":"Foo","target":"tiny"},{"alias":"bar","target":"tiny2"}]}`)

	// Deleting what one backend has is a success; then it is nowhere.
	s, h, b = e.call(t, "DELETE", e.url+aliases, `{"alias":"bar"}`)
	check("delete", s, h, b, 200, `{"deleted":true}`)
	s, h, b = e.call(t, "DELETE", e.url+aliases, `{"alias":"bar"}`)
	check("delete again", s, h, b, 404, `{"error":"alias \"bar\" not found"}`)

	s, h, b = e.call(t, "PUT", e.url+aliases, "")
	if s != 405 || h.Get("Allow") != "GET, POST, DELETE" || b != "405 method not allowed" {
		t.Fatalf("PUT: %d Allow %q %q", s, h.Get("Allow"), b)
	}
	s, h, _ = e.call(t, "POST", e.url+"/api/status", "")
	if s != 405 || h.Get("Allow") != "GET" {
		t.Fatalf("POST status: %d Allow %q", s, h.Get("Allow"))
	}
}
