package auth

import (
	"context"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/droverhq/drover/pkg/apikey"
	"github.com/droverhq/drover/pkg/config"
)

var twoKeys = []config.APIKey{{ID: "team-a", Key: "secret-a", Role: "client"}, {ID: "team-b", Key: "secret-b", Role: "client"}}

// testPolicy: /health public, /admin admin-only, the query key only on
// /api/usage-stream, everything else any key.
var testPolicy = Policy{
	Access: func(r *http.Request) Access {
		switch r.URL.Path {
		case "/health":
			return Public
		case "/admin":
			return Admin
		}
		return Client
	},
	QueryKey: func(r *http.Request) bool { return r.URL.Path == "/api/usage-stream" },
}

// serve runs one request through the middleware and reports whether it was
// let through, with which key id, or the refusal's message.
func serve(keys *Keys, req *http.Request) (passed bool, id, denied string) {
	p := testPolicy
	p.Deny = func(w http.ResponseWriter, r *http.Request, status int, msg string) {
		denied = msg
		w.WriteHeader(status)
	}
	next := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		passed, id = true, KeyID(r.Context())
		if r.URL.Query().Has("api_key") && r.URL.Path == "/api/usage-stream" {
			panic("api_key reached the handler")
		}
	})
	keys.Middleware(p)(next).ServeHTTP(httptest.NewRecorder(), req)
	return passed, id, denied
}

func TestMiddleware(t *testing.T) {
	tests := []struct {
		name   string
		keys   []config.APIKey
		target string
		header string // Authorization
		wantID string // "" means refused
		denied string // the refusal's message
	}{
		{"no keys configured: open to all", nil, "/api/chat", "", Anonymous, ""},
		{"no keys configured: a key is ignored", nil, "/api/chat", "Bearer whatever", Anonymous, ""},
		{"missing key", twoKeys, "/api/chat", "", "", "missing API key: send Authorization: Bearer <key>"},
		{"wrong key", twoKeys, "/api/chat", "Bearer secret-c", "", "invalid API key"},
		{"a real key's prefix", twoKeys, "/api/chat", "Bearer secret-", "", "invalid API key"},
		{"a real key with more after it", twoKeys, "/api/chat", "Bearer secret-aa", "", "invalid API key"},
		{"key ids are not keys", twoKeys, "/api/chat", "Bearer team-a", "", "invalid API key"},
		{"right key", twoKeys, "/api/chat", "Bearer secret-a", "team-a", ""},
		{"the other right key", twoKeys, "/api/chat", "Bearer secret-b", "team-b", ""},
		{"scheme in any case", twoKeys, "/api/chat", "bEARER secret-b", "team-b", ""},
		{"spaces around the key", twoKeys, "/api/chat", "Bearer   secret-a  ", "team-a", ""},
		{"not a bearer scheme", twoKeys, "/api/chat", "Basic secret-a", "", "missing API key: send Authorization: Bearer <key>"},
		{"bearer without a key", twoKeys, "/api/chat", "Bearer", "", "missing API key: send Authorization: Bearer <key>"},
		{"query parameter, for EventSource", twoKeys, "/api/usage-stream?api_key=secret-b", "", "team-b", ""},
		{"wrong query parameter", twoKeys, "/api/usage-stream?api_key=nope", "", "", "invalid API key"},
		{"header wins over query", twoKeys, "/api/usage-stream?api_key=secret-b", "Bearer secret-a", "team-a", ""},
		{"non-bearer header leaves the query", twoKeys, "/api/usage-stream?api_key=secret-b", "Basic xyz", "team-b", ""},
		{"open path without a key", twoKeys, "/health", "", Anonymous, ""},
		{"open path with a key knows it", twoKeys, "/health", "Bearer secret-b", "team-b", ""},
		{"open path with a wrong key is anonymous", twoKeys, "/health", "Bearer nope", Anonymous, ""},
		{"query parameter elsewhere is no credential", twoKeys, "/api/chat?api_key=secret-a", "", "", "missing API key: send Authorization: Bearer <key>"},
		{"client key on an admin route", twoKeys, "/admin", "Bearer secret-a", "", "key team-a may not do this: it needs the admin role"},
		{"admin key on an admin route", append([]config.APIKey{{ID: "ops", Key: "secret-o", Role: "admin"}}, twoKeys...), "/admin", "Bearer secret-o", "ops", ""},
		{"no keys: admin routes open too", nil, "/admin", "", Anonymous, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req := httptest.NewRequest(http.MethodGet, tt.target, nil)
			if tt.header != "" {
				req.Header.Set("Authorization", tt.header)
			}
			passed, id, denied := serve(New(tt.keys), req)
			if tt.wantID == "" {
				if passed || denied != tt.denied {
					t.Fatalf("passed %v (id %q), denied %q; want refused with %q", passed, id, denied, tt.denied)
				}
				return
			}
			if !passed || id != tt.wantID {
				t.Fatalf("passed %v with id %q (denied %q); want through as %q", passed, id, denied, tt.wantID)
			}
		})
	}
}

// Anthropic's clients send the key as x-api-key; it counts as the Bearer
// header does, and a Bearer header beside it wins.
func TestMiddlewareXAPIKey(t *testing.T) {
	tests := []struct {
		name, xAPIKey, bearer, wantID, denied string
	}{
		{"right key", "secret-a", "", "team-a", ""},
		{"the other right key", "secret-b", "", "team-b", ""},
		{"wrong key", "secret-c", "", "", "invalid API key"},
		{"spaces around the key", "  secret-b ", "", "team-b", ""},
		{"bearer wins", "secret-a", "Bearer secret-b", "team-b", ""},
		{"a wrong bearer is not rescued", "secret-a", "Bearer nope", "", "invalid API key"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req := httptest.NewRequest(http.MethodPost, "/v1/messages", nil)
			req.Header.Set("X-Api-Key", tt.xAPIKey)
			if tt.bearer != "" {
				req.Header.Set("Authorization", tt.bearer)
			}
			passed, id, denied := serve(New(twoKeys), req)
			if passed != (tt.wantID != "") || id != tt.wantID || denied != tt.denied {
				t.Fatalf("passed %v as %q, denied %q; want id %q, denied %q", passed, id, denied, tt.wantID, tt.denied)
			}
		})
	}
}

// Lookup finds the right id wherever the key sits in the list and accepts
// nothing but a configured key. (That it compares every digest in constant
// time is read in the code, not measured here.)
func TestLookup(t *testing.T) {
	keys := New([]config.APIKey{{ID: "one", Key: "k1"}, {ID: "two", Key: "k2"}, {ID: "three", Key: "k3"}})
	for presented, want := range map[string]string{"k1": "one", "k2": "two", "k3": "three"} {
		if p, ok := keys.Lookup(presented); !ok || p.ID != want {
			t.Errorf("Lookup(%q) = %q, %v; want %q", presented, p.ID, ok, want)
		}
	}
	for _, presented := range []string{"", "k", "k4", "K1", "k1 "} {
		if p, ok := keys.Lookup(presented); ok {
			t.Errorf("Lookup(%q) = %q: accepted a key that is not configured", presented, p.ID)
		}
	}
	if _, ok := New(nil).Lookup(""); ok {
		t.Error("an empty key set accepted the empty key")
	}
}

func TestKeyIDInContext(t *testing.T) {
	if got := KeyID(context.Background()); got != Anonymous {
		t.Fatalf("no key id: got %q, want %q", got, Anonymous)
	}
	if got := KeyID(WithPrincipal(context.Background(), Principal{ID: "team-a"})); got != "team-a" {
		t.Fatalf("got %q", got)
	}
}

// Bucket keys come and go as a whole; the config file's ids cannot be
// shadowed by the bucket, and a bucket key makes an open proxy closed.
func TestBucketKeys(t *testing.T) {
	keys := New(nil)
	if !keys.Open() {
		t.Fatal("no keys: want open")
	}
	secret := apikey.NewSecret()
	skipped := keys.SetBucket([]apikey.Record{
		{ID: "team-c", Role: "client", Digest: apikey.Digest(secret), Models: []string{"llama*"}},
		{ID: "broken", Role: "root", Digest: apikey.Digest("x")},
	})
	if len(skipped) != 1 || skipped[0] != "broken" || keys.Open() {
		t.Fatalf("skipped %v, open %v", skipped, keys.Open())
	}
	p, ok := keys.Lookup(secret)
	if !ok || p.ID != "team-c" || p.AllowsModel("qwen2") || !p.AllowsModel("llama3:8b") {
		t.Fatalf("lookup %+v %v", p, ok)
	}
	keys.SetBucket(nil)
	if _, ok := keys.Lookup(secret); ok || !keys.Open() {
		t.Fatal("revoked key still valid")
	}
	withFile := New(twoKeys)
	if skipped := withFile.SetBucket([]apikey.Record{{ID: "team-a", Role: "admin", Digest: apikey.Digest("other")}}); len(skipped) != 1 {
		t.Fatal("a bucket key shadowed a config file id")
	}
}
