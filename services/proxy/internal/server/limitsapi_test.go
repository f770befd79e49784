package server

import (
	"encoding/json"
	"io"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/droverhq/drover/pkg/apikey"
	"github.com/droverhq/drover/pkg/config"
	"github.com/droverhq/drover/services/proxy/internal/limits"
	"github.com/droverhq/drover/testkit/natstest"
)

// TestLimitsAPI: GET /api/limits through the whole server, with real NATS
// and a run-time key besides the config file's. A client key reads its
// own limits, what is left and what it spent (its traffic shows), and is
// refused another key's; an admin reads every key's, config and bucket,
// or one.
func TestLimitsAPI(t *testing.T) {
	ns := natstest.Start(t)
	nc, err := nats.Connect(ns.URL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	e := newEnvOpts(t, 1, nil, func(c *config.Config) {
		c.Auth.StateFile = filepath.Join(t.TempDir(), "keys.json")
		c.Auth.Keys = []config.APIKey{{ID: "root", Key: "secret-root", Role: apikey.RoleAdmin},
			{ID: "team-a", Key: "secret-a", Limits: apikey.Limits{RequestsPerMinute: 100, TokensPerDay: 1_000_000},
				ModelLimits: map[string]apikey.Limits{"tiny": {Concurrent: 3}}}}
	}, Options{SyncConn: nc})
	call := func(method, path, body, secret string) (int, string) {
		t.Helper()
		req, _ := http.NewRequestWithContext(t.Context(), method, e.url+path, strings.NewReader(body))
		if secret != "" {
			req.Header.Set("Authorization", "Bearer "+secret)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	status := func(body string) limits.Status {
		t.Helper()
		var st limits.Status
		if err := json.Unmarshal([]byte(body), &st); err != nil {
			t.Fatalf("%v: %s", err, body)
		}
		return st
	}

	code, body := call(http.MethodPost, "/api/keys", `{"id":"team-b","limits":{"tokens_per_month":5000}}`, "secret-root")
	var created apikey.View
	if code != http.StatusCreated || json.Unmarshal([]byte(body), &created) != nil {
		t.Fatalf("creating team-b: %d %s", code, body)
	}

	// team-a's traffic: what it spent shows, and what is left is less.
	if code, body := call(http.MethodPost, "/api/chat", `{"model":"tiny","messages":[{"role":"user","content":"hi"}],"stream":false}`, "secret-a"); code != 200 {
		t.Fatalf("chat as team-a: %d %s", code, body)
	}
	var own limits.Status
	waitFor(t, func() bool {
		code, body = call(http.MethodGet, "/api/limits", "", "secret-a")
		own = status(body)
		return code == 200 && own.Spend.TokensToday > 0
	})
	now := time.Now().UTC()
	tomorrow := time.Date(now.Year(), now.Month(), now.Day()+1, 0, 0, 0, 0, time.UTC)
	if own.KeyID != "team-a" || own.Limits.TokensPerDay != 1_000_000 || own.Remaining.TokensToday == nil ||
		*own.Remaining.TokensToday != 1_000_000-own.Spend.TokensToday || own.Spend.TokensThisMonth < own.Spend.TokensToday ||
		own.Remaining.TokensThisMonth != nil || own.ModelLimits["tiny"].Concurrent != 3 ||
		own.ModelRemaining["tiny"].Concurrent == nil || *own.ModelRemaining["tiny"].Concurrent != 3 ||
		!own.Resets.Day.Equal(tomorrow) && !own.Resets.Day.Equal(tomorrow.AddDate(0, 0, 1)) {
		t.Errorf("team-a's own limits: %s", body)
	}
	if code, body := call(http.MethodGet, "/api/limits?key_id=team-a", "", "secret-a"); code != 200 || status(body).KeyID != "team-a" {
		t.Errorf("team-a naming itself: %d %s", code, body)
	}
	code, body = call(http.MethodGet, "/api/limits?key_id=team-b", "", "secret-a")
	var refusal map[string]string
	if code != http.StatusForbidden || json.Unmarshal([]byte(body), &refusal) != nil ||
		!strings.Contains(refusal["error"], "key team-a may see only its own limits") || strings.Contains(body, "5000") {
		t.Errorf("team-a asking for team-b's: %d %s", code, body)
	}
	code, body = call(http.MethodGet, "/api/limits", "", created.Secret)
	if st := status(body); code != 200 || st.KeyID != "team-b" || st.Limits.TokensPerMonth != 5000 || st.Spend.TokensToday != 0 ||
		st.Remaining.TokensThisMonth == nil || *st.Remaining.TokensThisMonth != 5000 {
		t.Errorf("team-b (a bucket key), its own: %d %s", code, body)
	}
	if code, body := call(http.MethodGet, "/api/limits", "", ""); code != http.StatusUnauthorized {
		t.Errorf("no key: %d %s", code, body)
	}

	code, body = call(http.MethodGet, "/api/limits", "", "secret-root")
	var all struct{ Keys []limits.Status }
	if code != 200 || json.Unmarshal([]byte(body), &all) != nil || len(all.Keys) != 3 || all.Keys[0].KeyID != "root" ||
		all.Keys[1].KeyID != "team-a" || all.Keys[1].Spend.TokensToday < own.Spend.TokensToday || all.Keys[2].KeyID != "team-b" ||
		all.Keys[2].Limits.TokensPerMonth != 5000 {
		t.Errorf("admin, every key: %d %s", code, body)
	}
	if code, body := call(http.MethodGet, "/api/limits?key_id=team-b", "", "secret-root"); code != 200 || status(body).Limits.TokensPerMonth != 5000 {
		t.Errorf("admin, team-b: %d %s", code, body)
	}
	if code, body := call(http.MethodGet, "/api/limits?key_id=ghost", "", "secret-root"); code != http.StatusNotFound || !strings.Contains(body, "no key ghost") {
		t.Errorf("admin, an unknown key: %d %s", code, body)
	}
	// A change at run time is what the next answer shows.
	if code, body := call(http.MethodPatch, "/api/keys/team-b", `{"limits":{"tokens_per_day":700}}`, "secret-root"); code != 200 {
		t.Fatalf("changing team-b: %d %s", code, body)
	}
	code, body = call(http.MethodGet, "/api/limits", "", created.Secret)
	if st := status(body); code != 200 || st.Limits != (apikey.Limits{TokensPerDay: 700, TokensPerMonth: 5000}) {
		t.Errorf("team-b after the change: %d %s", code, body)
	}
}
