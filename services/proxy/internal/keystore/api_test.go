package keystore

import (
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/go-chi/chi/v5"
	"github.com/nats-io/nats.go"

	"github.com/droverhq/drover/pkg/apikey"
	"github.com/droverhq/drover/testkit/natstest"
)

// serveAPI serves /api/keys over a store on nc (nil: no NATS), with one
// config-file key "boot".
func serveAPI(t *testing.T, nc *nats.Conn, logs io.Writer) string {
	t.Helper()
	st := Open(Options{Conn: nc, Bucket: bucket, Log: slog.New(slog.DiscardHandler)})
	t.Cleanup(st.Close)
	r := chi.NewRouter()
	(&API{Store: st, Config: []apikey.Record{{ID: "boot", Role: apikey.RoleAdmin, Source: "config"}},
		Log: slog.New(slog.NewTextHandler(logs, nil))}).Routes(r)
	hs := httptest.NewServer(r)
	t.Cleanup(hs.Close)
	return hs.URL
}

func call(t *testing.T, method, url, body string) (int, map[string]any, string) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	var doc map[string]any
	if err := json.Unmarshal(raw, &doc); err != nil {
		t.Fatalf("%s %s: answer is not a JSON object: %q", method, url, raw)
	}
	return resp.StatusCode, doc, string(raw)
}

func TestAPI(t *testing.T) {
	ns := natstest.Start(t)
	logs := &syncBuffer{}
	base := serveAPI(t, connect(t, ns.URL()), logs) + "/api/keys"

	code, doc, raw := call(t, http.MethodPost, base, `{"id":"team-a","models":["llama3*"," qwen* "]}`)
	secret, _ := doc["secret"].(string)
	if code != http.StatusCreated || !strings.HasPrefix(secret, apikey.SecretPrefix) || doc["role"] != "client" ||
		doc["source"] != "bucket" || !strings.Contains(raw, `"models":["llama3*","qwen*"]`) || !strings.Contains(raw, "store this secret now") {
		t.Fatalf("create: %d %s", code, raw)
	}
	if _, ok := doc["digest"]; ok || strings.Contains(raw, apikey.Digest(secret)) {
		t.Errorf("create answer shows the digest: %s", raw)
	}

	for _, tc := range []struct {
		name, method, path, body string
		status                   int
		want                     string // in the error message
	}{
		{"create existing", "POST", "", `{"id":"team-a"}`, 409, "key team-a exists"},
		{"create a config key's id", "POST", "", `{"id":"boot"}`, 409, "config file"},
		{"bad id", "POST", "", `{"id":"has space"}`, 400, "key id"},
		{"no id", "POST", "", `{"role":"client"}`, 400, "key id"},
		{"bad role", "POST", "", `{"id":"x","role":"root"}`, 400, "role"},
		{"bad pattern", "POST", "", `{"id":"x","models":["["]}`, 400, "model pattern"},
		{"empty pattern", "POST", "", `{"id":"x","models":[""]}`, 400, "model pattern"},
		{"unknown field", "POST", "", `{"id":"x","rol":"admin"}`, 400, "unknown field"},
		{"no body", "POST", "", ``, 400, "missing JSON body"},
		{"change a config key", "PATCH", "/boot", `{"role":"client"}`, 409, "defined in the config file; change it there"},
		{"change unknown", "PATCH", "/nobody", `{"role":"client"}`, 404, "no key nobody"},
		{"change nothing", "PATCH", "/team-a", `{}`, 400, "nothing to change"},
		{"change to a bad role", "PATCH", "/team-a", `{"role":"root"}`, 400, "role"},
		{"bad id in path", "PATCH", "/-x", `{"role":"client"}`, 400, "key id"},
		{"revoke unknown", "DELETE", "/nobody", ``, 404, "no key nobody"},
		{"revoke a config key", "DELETE", "/boot", ``, 409, "config file"},
		{"rotate unknown", "POST", "/nobody/rotate", ``, 404, "no key nobody"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, doc, raw := call(t, tc.method, base+tc.path, tc.body)
			msg, _ := doc["error"].(string)
			if code != tc.status || !strings.Contains(msg, tc.want) || len(doc) != 1 {
				t.Errorf("%d %s, want %d with %q in {\"error\": ...}", code, raw, tc.status, tc.want)
			}
		})
	}

	code, doc, raw = call(t, http.MethodPatch, base+"/team-a", `{"role":"admin"}`)
	if code != 200 || doc["role"] != "admin" || !strings.Contains(raw, `"models":["llama3*","qwen*"]`) {
		t.Fatalf("change role: %d %s", code, raw)
	}
	code, _, raw = call(t, http.MethodPatch, base+"/team-a", `{"models":[]}`)
	if code != 200 || !strings.Contains(raw, `"models":[]`) || !strings.Contains(raw, `"role":"admin"`) {
		t.Fatalf("clear models: %d %s", code, raw)
	}
	code, doc, raw = call(t, http.MethodPost, base+"/team-a/rotate", ``)
	rotated, _ := doc["secret"].(string)
	if code != 200 || !strings.HasPrefix(rotated, apikey.SecretPrefix) || rotated == secret {
		t.Fatalf("rotate: %d %s", code, raw)
	}

	code, _, raw = call(t, http.MethodGet, base, ``)
	var list struct{ Keys []map[string]any }
	json.Unmarshal([]byte(raw), &list) //nolint:errcheck // checked below
	if code != 200 || len(list.Keys) != 2 || list.Keys[0]["id"] != "boot" || list.Keys[0]["source"] != "config" ||
		list.Keys[1]["id"] != "team-a" || list.Keys[1]["source"] != "bucket" || list.Keys[1]["created"] == nil {
		t.Fatalf("list: %d %s", code, raw)
	}
	if strings.Contains(raw, `"digest"`) || strings.Contains(raw, apikey.Digest(rotated)) || strings.Contains(raw, apikey.SecretPrefix) {
		t.Errorf("list shows a digest or a secret: %s", raw)
	}

	code, doc, raw = call(t, http.MethodDelete, base+"/team-a", ``)
	if code != 200 || doc["revoked"] != "team-a" {
		t.Fatalf("revoke: %d %s", code, raw)
	}
	if _, _, raw := call(t, http.MethodGet, base, ``); strings.Contains(raw, "team-a") {
		t.Errorf("revoked key still listed: %s", raw)
	}
	for _, s := range []string{secret, rotated, apikey.Digest(secret), apikey.Digest(rotated)} {
		if strings.Contains(logs.String(), s) {
			t.Errorf("a secret or digest is in the log:\n%s", logs.String())
		}
	}
	if !strings.Contains(logs.String(), "API key created") || !strings.Contains(logs.String(), "API key revoked") {
		t.Errorf("changes not logged:\n%s", logs.String())
	}
}

func TestAPIWithoutNATS(t *testing.T) {
	base := serveAPI(t, nil, io.Discard) + "/api/keys"
	for _, c := range [][3]string{
		{"POST", "", `{"id":"x"}`}, {"PATCH", "/x", `{"role":"admin"}`}, {"DELETE", "/x", ``}, {"POST", "/x/rotate", ``},
	} {
		code, doc, raw := call(t, c[0], base+c[1], c[2])
		if code != http.StatusServiceUnavailable || doc["error"] != "key management needs NATS (nats.url)" {
			t.Errorf("%s %s: %d %s", c[0], c[1], code, raw)
		}
	}
	// The config file's keys are still listed.
	code, _, raw := call(t, http.MethodGet, base, ``)
	if code != 200 || !strings.Contains(raw, `"id":"boot"`) {
		t.Errorf("list: %d %s", code, raw)
	}
}

// With NATS configured but unreachable, changes answer 503 and say why.
func TestAPINATSUnreachable(t *testing.T) {
	nc := connect(t, "nats://"+closedAddr(t))
	base := serveAPI(t, nc, io.Discard) + "/api/keys"
	code, doc, raw := call(t, http.MethodPost, base, `{"id":"x"}`)
	msg, _ := doc["error"].(string)
	if code != http.StatusServiceUnavailable || !strings.Contains(msg, "key bucket is unreachable") {
		t.Errorf("%d %s", code, raw)
	}
}
