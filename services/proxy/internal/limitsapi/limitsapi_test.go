package limitsapi

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/go-chi/chi/v5"

	"github.com/droverhq/drover/pkg/apikey"
	"github.com/droverhq/drover/pkg/config"
	"github.com/droverhq/drover/services/proxy/internal/auth"
	"github.com/droverhq/drover/services/proxy/internal/limits"
)

// echoSource answers with the principal's own limits and id, so the test
// sees whose status each answer is.
type echoSource struct{}

func (echoSource) Status(p auth.Principal) limits.Status {
	return limits.Status{KeyID: p.ID, Limits: p.Limits, ModelLimits: p.ModelLimits}
}

// TestScope: a client sees its own limits only (403 for another key's),
// an admin every key's, config and bucket, or one by ?key_id=.
func TestScope(t *testing.T) {
	keys := auth.New([]config.APIKey{
		{ID: "root", Key: "s-root", Role: apikey.RoleAdmin},
		{ID: "team-a", Key: "s-a", Role: apikey.RoleClient, Limits: apikey.Limits{TokensPerDay: 1000}},
	})
	keys.SetBucket([]apikey.Record{{ID: "team-b", Role: apikey.RoleClient, Digest: apikey.Digest("s-b"),
		Limits: apikey.Limits{Concurrent: 2}}})
	r := chi.NewRouter()
	r.Use(keys.Middleware(auth.Policy{Access: func(*http.Request) auth.Access { return auth.Client },
		QueryKey: func(*http.Request) bool { return false },
		Deny:     func(w http.ResponseWriter, _ *http.Request, status int, msg string) { http.Error(w, msg, status) }}))
	(&API{Source: echoSource{}, Principals: keys.Principals}).Routes(r)
	hs := httptest.NewServer(r)
	t.Cleanup(hs.Close)

	get := func(key, query string) (int, string) {
		t.Helper()
		req, _ := http.NewRequestWithContext(t.Context(), http.MethodGet, hs.URL+"/api/limits"+query, nil)
		req.Header.Set("Authorization", "Bearer "+key)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	one := func(body string) limits.Status {
		var st limits.Status
		if err := json.Unmarshal([]byte(body), &st); err != nil {
			t.Fatalf("%v: %s", err, body)
		}
		return st
	}

	for _, tc := range []struct {
		name, key, query string
		status           int
		want             string // the key_id answered, or in the error
	}{
		{"client, its own", "s-a", "", 200, "team-a"},
		{"client naming itself", "s-a", "?key_id=team-a", 200, "team-a"},
		{"bucket client", "s-b", "", 200, "team-b"},
		{"client naming another key", "s-a", "?key_id=team-b", 403, "key team-a may see only its own limits"},
		{"admin, one key", "s-root", "?key_id=team-b", 200, "team-b"},
		{"admin, unknown key", "s-root", "?key_id=nobody", 404, "no key nobody"},
		{"bad key id", "s-root", "?key_id=has%20space", 400, "key id"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, body := get(tc.key, tc.query)
			if code != tc.status {
				t.Fatalf("%d %s, want %d", code, body, tc.status)
			}
			if code == 200 {
				if got := one(body).KeyID; got != tc.want {
					t.Errorf("answered for %q, want %q: %s", got, tc.want, body)
				}
				return
			}
			var e struct{ Error string }
			if json.Unmarshal([]byte(body), &e) != nil || !strings.Contains(e.Error, tc.want) {
				t.Errorf("%s, want {\"error\": ...%q...}", body, tc.want)
			}
		})
	}

	code, body := get("s-root", "")
	var all All
	if code != 200 || json.Unmarshal([]byte(body), &all) != nil || len(all.Keys) != 3 ||
		all.Keys[0].KeyID != "root" || all.Keys[1].KeyID != "team-a" || all.Keys[2].KeyID != "team-b" ||
		all.Keys[1].Limits.TokensPerDay != 1000 || all.Keys[2].Limits.Concurrent != 2 {
		t.Errorf("admin, every key: %d %s", code, body)
	}
}
