package server

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/ollama/ollama/api"
	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"

	"github.com/droverhq/drover/pkg/config"
)

// The keys of the access tests: an admin, a client, a client limited to the
// model "tiny", and a key nobody issued.
const (
	adminSecret   = "secret-admin"
	clientSecret  = "secret-client"
	limitedSecret = "secret-limited"
	wrongSecret   = "secret-wrong"
)

func accessKeys(c *config.Config) {
	c.Auth.Keys = []config.APIKey{
		{ID: "ops", Key: adminSecret, Role: "admin"},
		{ID: "team-a", Key: clientSecret, Role: "client"},
		{ID: "team-l", Key: limitedSecret, Role: "client", Models: []string{"tiny"}},
	}
}

// adminOnly are the routes the issue gives to admins only: model
// management (pull, push, create, copy, delete, blobs, aliases), caches,
// configuration, keys, metrics and the per-backend listing.
var adminOnly = []string{
	"POST /api/pull", "POST /api/push", "POST /api/create", "POST /api/copy", "DELETE /api/delete",
	"HEAD /api/blobs/{digest}", "POST /api/blobs/{digest}",
	"POST /api/experimental/aliases", "DELETE /api/experimental/aliases",
	"POST /api/cache/invalidate", "GET /api/config", "GET /api/ps_details", "GET /metrics",
	"GET /api/keys", "POST /api/keys", "PATCH /api/keys/{id}", "DELETE /api/keys/{id}", "POST /api/keys/{id}/rotate",
}

// public routes answer anyone: Ollama's "is it running" probe (the
// dashboard for browsers) and /health.
var public = []string{"GET /", "HEAD /", "GET /health"}

// modelBody is a valid request body naming model, for the routes that take
// one; "" for routes without a body.
func modelBody(route, model string) string {
	switch route {
	case "POST /api/chat":
		return `{"model":"` + model + `","messages":[{"role":"user","content":"hi"}],"stream":false}`
	case "POST /api/generate":
		return `{"model":"` + model + `","prompt":"hi","stream":false}`
	case "POST /api/embed", "POST /v1/embeddings":
		return `{"model":"` + model + `","input":"hi"}`
	case "POST /api/embeddings":
		return `{"model":"` + model + `","prompt":"hi"}`
	case "POST /api/show", "POST /api/delete":
		return `{"model":"` + model + `"}`
	case "POST /api/pull", "POST /api/push":
		return `{"model":"` + model + `","stream":false}`
	case "POST /api/create":
		return `{"model":"made-by-test","from":"` + model + `","stream":false}`
	case "POST /api/copy":
		return `{"source":"` + model + `","destination":"copied-by-test"}`
	case "POST /v1/chat/completions":
		return `{"model":"` + model + `","messages":[{"role":"user","content":"hi"}]}`
	case "POST /v1/completions", "POST /v1/images/generations", "POST /v1/images/edits":
		return `{"model":"` + model + `","prompt":"hi"}`
	case "POST /v1/rerank":
		return `{"model":"` + model + `","query":"q","documents":["a","b"]}`
	case "POST /v1/responses":
		return `{"model":"` + model + `","input":"hi"}`
	case "POST /v1/messages":
		return `{"model":"` + model + `","max_tokens":8,"messages":[{"role":"user","content":"hi"}]}`
	case "POST /api/experimental/aliases":
		return `{"alias":"alias-by-test","target":"` + model + `"}`
	case "DELETE /api/experimental/aliases":
		return `{"alias":"alias-by-test"}`
	case "POST /api/keys":
		return `{"id":"made-by-test","role":"client"}`
	case "PATCH /api/keys/{id}":
		return `{"role":"client"}`
	case "POST /api/cache/invalidate":
		return `{}`
	}
	return ""
}

// modelRoutes name a model a limited key may be refused: outside its list
// they answer 404, as for a model that does not exist.
var modelRoutes = []string{
	"POST /api/chat", "POST /api/generate", "POST /api/embed", "POST /api/embeddings", "POST /api/show",
	"POST /v1/chat/completions", "POST /v1/completions", "POST /v1/embeddings", "POST /v1/rerank",
	"POST /v1/responses", "POST /v1/images/generations", "POST /v1/messages", "GET /v1/models/*",
}

// accessCall is one request of the table.
type accessCall struct {
	status int
	body   []byte
	header http.Header
}

func callRoute(t *testing.T, base, route, model, secret string) accessCall {
	t.Helper()
	method, pattern, _ := strings.Cut(route, " ")
	path := strings.NewReplacer("{digest}", "sha256:"+strings.Repeat("ab", 32), "{id}", "team-a", "*", model).Replace(pattern)
	return callBody(t, base, method, path, modelBody(route, model), secret)
}

// callBody sends one request with a key ("" for none).
func callBody(t *testing.T, base, method, path, body, secret string) accessCall {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, method, base+path, strings.NewReader(body))
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	if secret != "" {
		req.Header.Set("Authorization", "Bearer "+secret)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	// The live usage stream never ends: its status and headers say enough.
	var b []byte
	if resp.Header.Get("Content-Type") != "text/event-stream" {
		b, _ = io.ReadAll(resp.Body)
	}
	return accessCall{resp.StatusCode, b, resp.Header}
}

// checkShape asserts a refusal is in the route's API's own error format.
func checkShape(t *testing.T, route string, c accessCall) {
	t.Helper()
	if strings.HasPrefix(route, "HEAD ") {
		return // no body
	}
	_, path, _ := strings.Cut(route, " ")
	var doc map[string]json.RawMessage
	if err := json.Unmarshal(c.body, &doc); err != nil {
		t.Fatalf("%s: refusal %d is not JSON: %q", route, c.status, c.body)
	}
	switch {
	case path == "/v1/messages":
		var e struct {
			Type  string `json:"type"`
			Error struct{ Type, Message string }
		}
		json.Unmarshal(c.body, &e) //nolint:errcheck
		if e.Type != "error" || e.Error.Type == "" || e.Error.Message == "" {
			t.Fatalf("%s: not Anthropic's error object: %s", route, c.body)
		}
	case strings.HasPrefix(path, "/v1/"):
		var e struct {
			Error struct {
				Message string  `json:"message"`
				Type    string  `json:"type"`
				Code    *string `json:"code"`
			} `json:"error"`
		}
		json.Unmarshal(c.body, &e) //nolint:errcheck
		if e.Error.Message == "" || e.Error.Type == "" {
			t.Fatalf("%s: not OpenAI's error object: %s", route, c.body)
		}
	default:
		var msg string
		if len(doc) != 1 || json.Unmarshal(doc["error"], &msg) != nil || msg == "" {
			t.Fatalf("%s: not Ollama's {\"error\": ...}: %s", route, c.body)
		}
	}
}

// Every route Drover serves × {no key, wrong key, client, client with a
// model outside its list, admin}: status and error shape. The routes come
// from the router itself, so a new route is in the table by default (as a
// client route, until listed otherwise above).
func TestAccessEveryRoute(t *testing.T) {
	e := newEnv(t, 1, nil, accessKeys)
	var routes []string
	chi.Walk(e.srv.Handler().(chi.Routes), func(method, route string, _ http.Handler, _ ...func(http.Handler) http.Handler) error { //nolint:errcheck
		routes = append(routes, method+" "+route)
		return nil
	})
	for _, want := range []string{"POST /api/chat", "POST /api/pull", "GET /api/keys", "POST /v1/messages", "GET /health"} {
		if !slices.Contains(routes, want) {
			t.Fatalf("route %s is not served (routes: %v)", want, routes)
		}
	}
	for _, route := range routes {
		t.Run(route, func(t *testing.T) {
			pub, admin := slices.Contains(public, route), slices.Contains(adminOnly, route)
			for _, who := range []struct {
				name, secret string
			}{{"no key", ""}, {"wrong key", wrongSecret}, {"client", clientSecret}, {"limited", limitedSecret}, {"admin", adminSecret}} {
				c := callRoute(t, e.url, route, "tiny", who.secret)
				switch {
				case pub:
					if c.status >= 400 {
						t.Fatalf("%s: public route answered %d: %s", who.name, c.status, c.body)
					}
				case who.secret == "" || who.secret == wrongSecret:
					if c.status != http.StatusUnauthorized {
						t.Fatalf("%s: got %d, want 401: %s", who.name, c.status, c.body)
					}
					checkShape(t, route, c)
				case admin && who.secret != adminSecret:
					if c.status != http.StatusForbidden {
						t.Fatalf("%s: got %d, want 403: %s", who.name, c.status, c.body)
					}
					checkShape(t, route, c)
				default:
					if c.status == http.StatusUnauthorized || c.status == http.StatusForbidden {
						t.Fatalf("%s: refused with %d: %s", who.name, c.status, c.body)
					}
				}
			}
			if slices.Contains(modelRoutes, route) {
				c := callRoute(t, e.url, route, "tiny2", limitedSecret)
				if c.status != http.StatusNotFound {
					t.Fatalf("limited key, model outside its list: got %d, want 404: %s", c.status, c.body)
				}
				checkShape(t, route, c)
				if !strings.Contains(string(c.body), "tiny2") || strings.Contains(string(c.body), "team-l") {
					t.Fatalf("refusal should read as a missing model: %s", c.body)
				}
			}
		})
	}
}

// bearer adds a key to every request of an http.Client, as a gateway's
// users configure the Ollama client.
type bearer struct{ secret string }

func (b bearer) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	r.Header.Set("Authorization", "Bearer "+b.secret)
	return http.DefaultTransport.RoundTrip(r)
}

func ollamaAs(e *env, secret string) *api.Client {
	u, _ := url.Parse(e.url)
	hc := &http.Client{}
	if secret != "" {
		hc.Transport = bearer{secret}
	}
	return api.NewClient(u, hc)
}

// The official Ollama client sees the refusals as status errors and the
// model list of a limited key as its list.
func TestAccessOllamaClient(t *testing.T) {
	e := newEnv(t, 1, nil, accessKeys)
	chat := &api.ChatRequest{Model: "tiny", Messages: []api.Message{{Role: "user", Content: "hi"}}, Stream: new(bool)}
	noop := func(api.ChatResponse) error { return nil }

	for _, tc := range []struct {
		secret string
		status int
	}{{"", 401}, {wrongSecret, 401}} {
		err := ollamaAs(e, tc.secret).Chat(ctx(t), chat, noop)
		if !hasStatus(err, tc.status) {
			t.Fatalf("key %q: got %v, want status %d", tc.secret, err, tc.status)
		}
	}
	if err := ollamaAs(e, clientSecret).Chat(ctx(t), chat, noop); err != nil {
		t.Fatalf("client chat: %v", err)
	}
	err := ollamaAs(e, clientSecret).Delete(ctx(t), &api.DeleteRequest{Model: "tiny"})
	if !hasStatus(err, 403) {
		t.Fatalf("client delete: got %v, want 403", err)
	}
	err = ollamaAs(e, clientSecret).Pull(ctx(t), &api.PullRequest{Model: "tiny"}, func(api.ProgressResponse) error { return nil })
	if !hasStatus(err, 403) {
		t.Fatalf("client pull: got %v, want 403", err)
	}
	outside := *chat
	outside.Model = "tiny2"
	if err := ollamaAs(e, limitedSecret).Chat(ctx(t), &outside, noop); !hasStatus(err, 404) {
		t.Fatalf("limited key, other model: got %v, want 404", err)
	}
	if _, err := ollamaAs(e, limitedSecret).Show(ctx(t), &api.ShowRequest{Model: "tiny2"}); !hasStatus(err, 404) {
		t.Fatalf("limited key, show other model: got %v, want 404", err)
	}
	list, err := ollamaAs(e, limitedSecret).List(ctx(t))
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, m := range list.Models {
		names = append(names, m.Name)
	}
	if len(names) != 1 || names[0] != "tiny:latest" {
		t.Fatalf("limited key lists %v, want only tiny", names)
	}
	if err := ollamaAs(e, limitedSecret).Chat(ctx(t), chat, noop); err != nil {
		t.Fatalf("limited key, its model: %v", err)
	}
	all, err := ollamaAs(e, adminSecret).List(ctx(t))
	if err != nil || len(all.Models) < 4 {
		t.Fatalf("admin lists %d models (%v)", len(all.Models), err)
	}
	ps, err := ollamaAs(e, limitedSecret).ListRunning(ctx(t))
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range ps.Models {
		if m.Name != "tiny:latest" {
			t.Fatalf("limited key sees %s running", m.Name)
		}
	}
}

func hasStatus(err error, status int) bool {
	var se api.StatusError
	if errors.As(err, &se) {
		return se.StatusCode == status
	}
	var ae api.AuthorizationError
	if errors.As(err, &ae) {
		return ae.StatusCode == status
	}
	return false
}

// The OpenAI SDK gets its typed errors: 401 invalid_api_key, 404
// model_not_found for a model outside the key's list, and /v1/models of a
// limited key lists its models only.
func TestAccessOpenAISDK(t *testing.T) {
	e := newEnv(t, 1, nil, accessKeys)
	as := func(secret string) *openai.Client {
		c := openai.NewClient(option.WithBaseURL(e.url+"/v1/"), option.WithAPIKey(secret), option.WithMaxRetries(0))
		return &c
	}
	_, err := as(wrongSecret).Chat.Completions.New(ctx(t), chatParams("tiny"))
	var oe *openai.Error
	if !errors.As(err, &oe) || oe.StatusCode != 401 || oe.Code != "invalid_api_key" {
		t.Fatalf("wrong key: %v", err)
	}
	_, err = as(limitedSecret).Chat.Completions.New(ctx(t), chatParams("tiny2"))
	if !errors.As(err, &oe) || oe.StatusCode != 404 || oe.Code != "model_not_found" {
		t.Fatalf("limited key, other model: %v", err)
	}
	if _, err := as(limitedSecret).Chat.Completions.New(ctx(t), chatParams("tiny")); err != nil {
		t.Fatalf("limited key, its model: %v", err)
	}
	page, err := as(limitedSecret).Models.List(ctx(t))
	if err != nil {
		t.Fatal(err)
	}
	if len(page.Data) != 1 || page.Data[0].ID != "tiny:latest" {
		t.Fatalf("limited key lists %+v", page.Data)
	}
	if _, err := as(limitedSecret).Models.Get(ctx(t), "tiny2"); !errors.As(err, &oe) || oe.StatusCode != 404 {
		t.Fatalf("limited key gets another model: %v", err)
	}
	if _, err := as(clientSecret).Models.Get(ctx(t), "tiny2"); err != nil {
		t.Fatalf("client gets a model: %v", err)
	}
}

// Anonymous /health says one word; an admin sees the backends with their
// passwords redacted.
func TestHealthDetailForAdminsOnly(t *testing.T) {
	e := newEnv(t, 1, nil, func(c *config.Config) {
		accessKeys(c)
		u, _ := url.Parse(c.Backends[0].URL)
		u.User = url.UserPassword("gpu", "hunter2-password")
		c.Backends[0].URL = u.String()
	})
	for _, secret := range []string{"", wrongSecret, clientSecret} {
		c := callRoute(t, e.url, "GET /health", "", secret)
		if c.status != 200 || strings.TrimSpace(string(c.body)) != `{"status":"ok"}` {
			t.Fatalf("key %q: /health %d %s", secret, c.status, c.body)
		}
	}
	c := callRoute(t, e.url, "GET /health", "", adminSecret)
	if c.status != 200 || !strings.Contains(string(c.body), `"backends"`) || strings.Contains(string(c.body), "hunter2") || !strings.Contains(string(c.body), "gpu:xxxxx@") {
		t.Fatalf("admin /health %d %s", c.status, c.body)
	}
	c = callRoute(t, e.url, "GET /api/config", "", adminSecret)
	if strings.Contains(string(c.body), "hunter2") {
		t.Fatalf("/api/config shows a backend password: %s", c.body)
	}
}

// ?api_key= authenticates only the live usage stream and the dashboard,
// and never reaches a handler, a backend or the analytics filter.
func TestQueryKeyOnlyWhereBrowsersNeedIt(t *testing.T) {
	e := newEnv(t, 1, nil, accessKeys)
	for _, path := range []string{"/api/tags", "/api/chat", "/v1/models", "/api/usage", "/api/config"} {
		resp, _ := get(t, e.url+path+"?api_key="+adminSecret, nil)
		if resp.StatusCode != http.StatusUnauthorized {
			t.Fatalf("%s?api_key=: got %d, want 401", path, resp.StatusCode)
		}
	}
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, e.url+"/api/usage-stream?api_key="+clientSecret, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("usage stream with ?api_key=: %d", resp.StatusCode)
	}
}

// With no key anywhere, a loopback proxy is open: everyone is the
// anonymous admin (local development stays as easy as Ollama).
func TestNoKeysIsOpen(t *testing.T) {
	e := newEnv(t, 1, nil, nil)
	for _, route := range []string{"GET /api/tags", "GET /api/config", "POST /api/chat"} {
		if c := callRoute(t, e.url, route, "tiny", ""); c.status != 200 {
			t.Fatalf("%s: %d %s", route, c.status, c.body)
		}
	}
	c := callRoute(t, e.url, "GET /health", "", "")
	if !strings.Contains(string(c.body), `"backends"`) {
		t.Fatalf("open /health shows no detail: %s", c.body)
	}
}

// CORS: preflights from configured origins are answered without a key;
// other origins get no CORS headers; backends' cookies and CORS headers
// never reach the client.
func TestCORS(t *testing.T) {
	e := newEnv(t, 1, nil, func(c *config.Config) {
		accessKeys(c)
		c.CORS.Origins = []string{"https://app.example.com"}
	})
	preflight := func(origin string) *http.Response {
		req, _ := http.NewRequest(http.MethodOptions, e.url+"/v1/chat/completions", nil)
		req.Header.Set("Origin", origin)
		req.Header.Set("Access-Control-Request-Method", "POST")
		req.Header.Set("Access-Control-Request-Headers", "authorization,content-type")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp
	}
	if r := preflight("https://app.example.com"); r.StatusCode != 204 || r.Header.Get("Access-Control-Allow-Origin") != "https://app.example.com" ||
		!strings.Contains(r.Header.Get("Access-Control-Allow-Headers"), "Authorization") {
		t.Fatalf("allowed origin preflight: %d %v", r.StatusCode, r.Header)
	}
	if r := preflight("https://evil.example.com"); r.Header.Get("Access-Control-Allow-Origin") != "" || r.StatusCode == 204 {
		t.Fatalf("other origin preflight: %d %v", r.StatusCode, r.Header)
	}
	req, _ := http.NewRequest(http.MethodPost, e.url+"/api/chat", bytes.NewReader([]byte(modelBody("POST /api/chat", "tiny"))))
	req.Header.Set("Authorization", "Bearer "+clientSecret)
	req.Header.Set("Origin", "https://app.example.com")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 || resp.Header.Get("Access-Control-Allow-Origin") != "https://app.example.com" {
		t.Fatalf("allowed origin request: %d %v", resp.StatusCode, resp.Header)
	}
}
