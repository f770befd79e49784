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
	"github.com/droverhq/drover/pkg/config"
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

// TestAPILimits: limits, per-model limits, weight and class are accepted
// on create, merged field by field on change, kept in the bucket (a second
// store on the same bucket reads them) and refused with the field named.
func TestAPILimits(t *testing.T) {
	ns := natstest.Start(t)
	base := serveAPI(t, connect(t, ns.URL()), io.Discard) + "/api/keys"

	code, _, raw := call(t, http.MethodPost, base, `{"id":"team-l"}`)
	if code != http.StatusCreated || !strings.Contains(raw, `"weight":1`) || !strings.Contains(raw, `"class":"interactive"`) ||
		strings.Contains(raw, `"limits"`) {
		t.Fatalf("create with defaults: %d %s", code, raw)
	}
	code, _, raw = call(t, http.MethodPost, base, `{"id":"team-b","limits":{"requests_per_minute":60,"tokens_per_day":100000},
		"model_limits":{"llama3":{"tokens_per_minute":5000},"idle":{}},"weight":3,"class":"batch"}`)
	if code != http.StatusCreated || !strings.Contains(raw, `"limits":{"requests_per_minute":60,"tokens_per_day":100000}`) ||
		!strings.Contains(raw, `"model_limits":{"llama3":{"tokens_per_minute":5000}}`) || !strings.Contains(raw, `"weight":3`) ||
		!strings.Contains(raw, `"class":"batch"`) {
		t.Fatalf("create with limits: %d %s", code, raw)
	}

	for _, tc := range []struct {
		name, method, path, body string
		want                     string
	}{
		{"negative limit", "POST", "", `{"id":"x","limits":{"tokens_per_day":-1}}`, "limits.tokens_per_day: must not be negative"},
		{"negative model limit", "POST", "", `{"id":"x","model_limits":{"llama3":{"concurrent":-2}}}`, "model_limits.llama3.concurrent: must not be negative"},
		{"empty model name", "POST", "", `{"id":"x","model_limits":{" ":{"concurrent":2}}}`, "model_limits: a model name must not be empty"},
		{"zero weight", "POST", "", `{"id":"x","weight":0}`, "weight: must be at least 1, got 0"},
		{"bad class", "POST", "", `{"id":"x","class":"urgent"}`, `class: must be interactive or batch, got "urgent"`},
		{"unknown limit", "POST", "", `{"id":"x","limits":{"tokens_per_year":1}}`, `unknown field "tokens_per_year"`},
		{"limit not a number", "POST", "", `{"id":"x","limits":{"concurrent":"2"}}`, "invalid JSON body"},
		{"change to a negative limit", "PATCH", "/team-b", `{"limits":{"requests_per_minute":-5}}`, "limits.requests_per_minute: must not be negative"},
		{"change to a negative model limit", "PATCH", "/team-b", `{"model_limits":{"qwen":{"tokens_per_month":-1}}}`, "model_limits.qwen.tokens_per_month: must not be negative"},
		{"change to a zero weight", "PATCH", "/team-b", `{"weight":0}`, "weight: must be at least 1"},
		{"change to a bad class", "PATCH", "/team-b", `{"class":""}`, "class: must be interactive or batch"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, doc, raw := call(t, tc.method, base+tc.path, tc.body)
			msg, _ := doc["error"].(string)
			if code != http.StatusBadRequest || !strings.Contains(msg, tc.want) || len(doc) != 1 {
				t.Errorf("%d %s, want 400 with %q in {\"error\": ...}", code, raw, tc.want)
			}
		})
	}

	// A change merges: fields it does not name stay, 0 lifts a limit, a
	// null model entry goes.
	code, _, raw = call(t, http.MethodPatch, base+"/team-b", `{"limits":{"tokens_per_day":0,"concurrent":4},
		"model_limits":{"llama3":null,"qwen":{"tokens_per_month":900}},"weight":2}`)
	if code != 200 || !strings.Contains(raw, `"limits":{"requests_per_minute":60,"concurrent":4}`) ||
		!strings.Contains(raw, `"model_limits":{"qwen":{"tokens_per_month":900}}`) || !strings.Contains(raw, `"weight":2`) ||
		!strings.Contains(raw, `"class":"batch"`) {
		t.Fatalf("change limits: %d %s", code, raw)
	}
	code, _, raw = call(t, http.MethodPatch, base+"/team-b", `{"model_limits":{"qwen":{"tokens_per_month":0}},"class":"interactive"}`)
	if code != 200 || strings.Contains(raw, `"model_limits"`) || !strings.Contains(raw, `"class":"interactive"`) ||
		!strings.Contains(raw, `"concurrent":4`) {
		t.Fatalf("lift the last model limit: %d %s", code, raw)
	}

	// Another replica's store reads the same record from the bucket.
	nc2 := connect(t, ns.URL())
	other := Open(Options{Conn: nc2, Bucket: bucket, Log: slog.New(slog.DiscardHandler)})
	t.Cleanup(other.Close)
	var got apikey.Record
	for _, r := range other.Records() {
		if r.ID == "team-b" {
			got = r
		}
	}
	want := apikey.Limits{RequestsPerMinute: 60, Concurrent: 4}
	if got.Limits != want || got.ModelLimits != nil || got.Weight != 2 || got.Class != apikey.ClassInteractive {
		t.Errorf("the bucket holds %+v, want limits %+v, weight 2, interactive", got, want)
	}
	// A key stored before limits existed (no weight, no class) takes a
	// change of its limits, with the defaults filled in.
	if _, err := other.Create(t.Context(), apikey.Record{ID: "old", Role: apikey.RoleClient}, apikey.NewSecret()); err != nil {
		t.Fatal(err)
	}
	code, _, raw = call(t, http.MethodPatch, base+"/old", `{"limits":{"concurrent":1}}`)
	if code != 200 || !strings.Contains(raw, `"limits":{"concurrent":1}`) || !strings.Contains(raw, `"weight":1`) || !strings.Contains(raw, `"class":"interactive"`) {
		t.Errorf("changing a key stored before limits: %d %s", code, raw)
	}
	// The list shows them too.
	if _, _, raw := call(t, http.MethodGet, base, ``); !strings.Contains(raw, `"limits":{"requests_per_minute":60,"concurrent":4}`) {
		t.Errorf("list: %s", raw)
	}
}

// FromConfig carries the config file's limits, weight and class.
func TestFromConfigLimits(t *testing.T) {
	recs := FromConfig([]config.APIKey{{ID: "c", Role: "client", Limits: apikey.Limits{TokensPerMonth: 7},
		ModelLimits: map[string]apikey.Limits{"m": {Concurrent: 1}}, Weight: 2, Class: apikey.ClassBatch}})
	if r := recs[0]; r.Limits.TokensPerMonth != 7 || r.ModelLimits["m"].Concurrent != 1 || r.Weight != 2 || r.Class != apikey.ClassBatch {
		t.Errorf("FromConfig: %+v", r)
	}
}
