package main

import (
	"encoding/json"
	"net/http"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/droverhq/drover/pkg/apikey"
	"github.com/droverhq/drover/testkit/natstest"
)

// TestKeysCommands drives droverctl keys against the real drover-proxy
// with real NATS and a config-file admin key.
func TestKeysCommands(t *testing.T) {
	ns := natstest.Start(t)
	admin := apikey.NewSecret()
	url, _ := startProxy(t, "DROVER_NATS_URL="+ns.URL(), "DROVER_AUTH_KEYS=boot:"+admin+":admin",
		"DROVER_AUTH_STATE_FILE="+filepath.Join(t.TempDir(), "keys.json"))
	t.Setenv("OLLAMA_HOST", "")
	t.Setenv("DROVERCTL_API_KEY", admin)
	secretRE := regexp.MustCompile(`drv_[0-9a-f]{64}`)
	get := func(path, key string) int {
		t.Helper()
		req, _ := http.NewRequestWithContext(t.Context(), http.MethodGet, url+path, nil)
		req.Header.Set("Authorization", "Bearer "+key)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}

	code, out, errOut := droverctl(t, "keys", "create", "team-a", "--models", "tiny*, qwen*", "--url", url)
	secret := secretRE.FindString(out)
	if code != 0 || secret == "" || !strings.Contains(out, "Store this secret now") || !strings.Contains(out, "role client, models tiny*,qwen*") {
		t.Fatalf("create: exit %d\n%s%s", code, out, errOut)
	}
	if got := get("/api/tags", secret); got != 200 {
		t.Errorf("the new key: %d on /api/tags, want 200", got)
	}
	if got := get("/api/keys", secret); got != 403 {
		t.Errorf("the new client key on /api/keys: %d, want 403", got)
	}

	for _, tc := range []struct {
		name string
		args []string
		code int
		want string // in stdout for 0, stderr otherwise
	}{
		{"create existing", []string{"create", "team-a"}, 1, "409 key team-a exists"},
		{"create a config key's id", []string{"create", "boot"}, 1, "config file"},
		{"create a bad id", []string{"create", "bad id"}, 1, "400 key id"},
		{"create a bad role", []string{"create", "x", "--role", "root"}, 1, `role "root"`},
		{"create a bad pattern", []string{"create", "x", "--models", "["}, 1, "model pattern"},
		{"list", []string{"list"}, 0, "team-a"},
		{"set the role", []string{"set", "team-a", "--role", "admin"}, 0, "key team-a: role admin, models tiny*,qwen*"},
		{"clear the models", []string{"set", "team-a", "--models="}, 0, "key team-a: role admin, models (all)"},
		{"set nothing", []string{"set", "team-a"}, 2, "give --role, --models, limits, --weight or --class"},
		{"set a config key", []string{"set", "boot", "--role", "client"}, 1, "defined in the config file; change it there"},
		{"set an unknown key", []string{"set", "nobody", "--role", "client"}, 1, "404 no key nobody"},
		{"revoke an unknown key", []string{"revoke", "nobody"}, 1, "404 no key nobody"},
		{"no verb", []string{}, 2, "Usage: droverctl keys"},
		{"unknown verb", []string{"delete", "x"}, 2, `unknown keys command "delete"`},
		{"missing id", []string{"revoke"}, 2, "takes 1 argument"},
		{"flags that do not apply", []string{"revoke", "team-a", "--role", "admin"}, 2, "--role applies to create and set, not revoke"},
		{"limits on list", []string{"list", "--tokens-per-day", "5"}, 2, "--tokens-per-day applies to create and set, not list"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, out, errOut := droverctl(t, append(append([]string{"keys"}, tc.args...), "--url", url)...)
			where := errOut
			if tc.code == 0 {
				where = out
			}
			if code != tc.code || !strings.Contains(where, tc.want) {
				t.Errorf("exit %d, want %d with %q\nstdout: %s\nstderr: %s", code, tc.code, tc.want, out, errOut)
			}
		})
	}
	if got := get("/api/keys", secret); got != 200 {
		t.Errorf("team-a, now an admin, on /api/keys: %d, want 200", got)
	}
	_, out, _ = droverctl(t, "keys", "create", "team-c", "--url", url)
	client := secretRE.FindString(out)
	if code, _, errOut := droverctl(t, "keys", "list", "--api-key", client, "--url", url); code != 1 || !strings.Contains(errOut, "403 key team-c may not do this") {
		t.Errorf("list with a client key: exit %d %q, want 1 with the 403", code, errOut)
	}

	code, out, _ = droverctl(t, "keys", "list", "--url", url)
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if code != 0 || len(lines) != 4 || !strings.HasPrefix(lines[0], "ID ") || !strings.Contains(lines[0], "SOURCE") ||
		!regexp.MustCompile(`^boot\s+admin\s+\(all\)\s+config\s+interactive\s+1\s+-\s+-\s+\d+\s+\d+\s+-\s+-$`).MatchString(lines[1]) ||
		!regexp.MustCompile(`^team-a\s+admin\s+\(all\)\s+bucket\s+interactive\s+1\s+-\s+-\s+\d+\s+\d+\s+\d{4}-\d\d-\d\d \d\d:\d\d`).MatchString(lines[2]) {
		t.Errorf("list table: exit %d\n%s", code, out)
	}
	code, out, _ = droverctl(t, "keys", "list", "--json", "--url", url)
	var doc struct{ Keys []keyDoc }
	if code != 0 || json.Unmarshal([]byte(out), &doc) != nil || len(doc.Keys) != 3 || doc.Keys[1].ID != "team-a" || doc.Keys[1].Source != "bucket" {
		t.Errorf("list --json: exit %d\n%s", code, out)
	}
	if strings.Contains(out, "digest") || secretRE.MatchString(out) {
		t.Errorf("list shows a digest or a secret:\n%s", out)
	}

	code, out, _ = droverctl(t, "keys", "rotate", "team-a", "--url", url)
	rotated := secretRE.FindString(out)
	if code != 0 || rotated == "" || rotated == secret || !strings.Contains(out, "Store this secret now") {
		t.Fatalf("rotate: exit %d\n%s", code, out)
	}
	if get("/api/tags", secret) != 401 || get("/api/tags", rotated) != 200 {
		t.Error("after rotate, the old secret should be refused and the new one accepted")
	}

	// The replica that answered the revoke enforces it already.
	code, out, _ = droverctl(t, "keys", "revoke", "team-a", "--url", url)
	if code != 0 || out != "revoked key team-a on every replica\n" {
		t.Fatalf("revoke: exit %d %q", code, out)
	}
	if got := get("/api/tags", rotated); got != 401 {
		t.Errorf("revoked key: %d, want 401", got)
	}
	if code, _, errOut := droverctl(t, "keys", "revoke", "team-a", "--url", url); code != 1 || !strings.Contains(errOut, "404") {
		t.Errorf("second revoke: exit %d %q", code, errOut)
	}
}

func TestSplitModels(t *testing.T) {
	for in, want := range map[string]string{"": "", " a* , ,b ": "a*|b", "x": "x"} {
		if got := strings.Join(splitModels(in), "|"); got != want {
			t.Errorf("splitModels(%q) = %q, want %q", in, got, want)
		}
	}
}

// TestKeysLimits sets a key's limits, per-model limits, weight and class
// with droverctl keys create and set against the real proxy, and reads
// them back, with what is left and what was spent, in keys list.
func TestKeysLimits(t *testing.T) {
	ns := natstest.Start(t)
	admin := apikey.NewSecret()
	url, _ := startProxy(t, "DROVER_NATS_URL="+ns.URL(), "DROVER_AUTH_KEYS=boot:"+admin+":admin",
		"DROVER_AUTH_STATE_FILE="+filepath.Join(t.TempDir(), "keys.json"))
	t.Setenv("OLLAMA_HOST", "")
	t.Setenv("DROVERCTL_API_KEY", admin)
	keys := func(args ...string) (int, string, string) {
		t.Helper()
		return droverctl(t, append(append([]string{"keys"}, args...), "--url", url)...)
	}

	code, out, errOut := keys("create", "team-l", "--requests-per-minute", "100", "--tokens-per-day", "100000",
		"--model-limit", "tiny:tokens_per_minute=5000,concurrent=2", "--weight", "3", "--class", "batch")
	secret := regexp.MustCompile(`drv_[0-9a-f]{64}`).FindString(out)
	if code != 0 || secret == "" || !strings.Contains(out, "class batch, weight 3, limits rpm=100 day=100000, tiny: tpm=5000 concurrent=2") {
		t.Fatalf("create with limits: exit %d\n%s%s", code, out, errOut)
	}

	for _, tc := range []struct {
		name string
		args []string
		code int
		want string // in stdout for 0, stderr otherwise
	}{
		{"merge: lift one, add one, drop a model's", []string{"set", "team-l", "--tokens-per-day", "0", "--tokens-per-month", "900000", "--model-limit", "tiny:none"},
			0, "key team-l: role client, models (all), class batch, weight 3, limits rpm=100 month=900000\n"},
		{"a model with a tag", []string{"set", "team-l", "--model-limit", "tiny:latest:tokens-per-day=5000", "--class", "interactive"},
			0, "class interactive, weight 3, limits rpm=100 month=900000, tiny:latest: day=5000\n"},
		{"no model", []string{"set", "team-l", "--model-limit", ":concurrent=1"}, 2, "want MODEL:field=N"},
		{"unknown model field", []string{"set", "team-l", "--model-limit", "tiny:tokens=5"}, 2, "with a field among requests_per_minute"},
		{"model limit not a number", []string{"set", "team-l", "--model-limit", "tiny:concurrent=two"}, 2, "concurrent must be a whole number"},
		{"negative limit", []string{"set", "team-l", "--tokens-per-day", "-1"}, 1, "limits.tokens_per_day: must not be negative"},
		{"negative model limit", []string{"create", "x", "--model-limit", "tiny:concurrent=-1"}, 1, "model_limits.tiny.concurrent: must not be negative"},
		{"bad class", []string{"create", "x", "--class", "urgent"}, 1, "class: must be interactive or batch"},
		{"zero weight", []string{"set", "team-l", "--weight", "0"}, 1, "weight: must be at least 1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, out, errOut := keys(tc.args...)
			where := errOut
			if tc.code == 0 {
				where = out
			}
			if code != tc.code || !strings.Contains(where, tc.want) {
				t.Errorf("exit %d, want %d with %q\nstdout: %s\nstderr: %s", code, tc.code, tc.want, out, errOut)
			}
		})
	}

	// Traffic from team-l: the list shows it spent and has less left.
	body := strings.NewReader(`{"model":"tiny","messages":[{"role":"user","content":"hello"}],"stream":false}`)
	req, _ := http.NewRequestWithContext(t.Context(), http.MethodPost, url+"/api/chat", body)
	req.Header.Set("Authorization", "Bearer "+secret)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("chat as team-l: %d", resp.StatusCode)
	}
	row := regexp.MustCompile(`(?m)^team-l\s+client\s+\(all\)\s+bucket\s+interactive\s+3\s+rpm=100 month=900000\s+rpm=(?:99|100) month=(\d+)\s+(\d+)\s+(\d+)\s`)
	// The model limit on tiny:latest counts the request for tiny (the
	// same model to Ollama): less than 5000 is left.
	modelRow := regexp.MustCompile(`(?m)^  model tiny:latest\s+day=5000\s+day=(?:[0-9]{1,3}|[0-4][0-9]{3})\s*$`)
	var m []string
	for deadline := time.Now().Add(10 * time.Second); ; {
		code, out, errOut = keys("list")
		if m = row.FindStringSubmatch(out); code == 0 && m != nil && m[2] != "0" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("list never showed team-l's spend: exit %d\n%s%s", code, out, errOut)
		}
		time.Sleep(50 * time.Millisecond)
	}
	left, _ := strconv.ParseInt(m[1], 10, 64)
	today, _ := strconv.ParseInt(m[2], 10, 64)
	month, _ := strconv.ParseInt(m[3], 10, 64)
	if today <= 0 || month < today || left != 900000-month || !modelRow.MatchString(out) {
		t.Errorf("team-l spent %d today, %d this month, %d left of 900000:\n%s", today, month, left, out)
	}
	// Without ClickHouse the day and month are this replica's view, and
	// the list says so.
	if !strings.Contains(errOut, "not the whole fleet's: clickhouse.addr is not set") {
		t.Errorf("list does not say its figures are partial; stderr: %s", errOut)
	}

	code, out, _ = keys("list", "--json")
	var doc struct {
		Keys []struct {
			ID     string
			Limits apikey.Limits
			Status struct {
				KeyID string `json:"key_id"`
				Spend struct {
					TokensToday int64 `json:"tokens_today"`
				}
			}
		}
	}
	if code != 0 || json.Unmarshal([]byte(out), &doc) != nil || len(doc.Keys) != 2 || doc.Keys[1].ID != "team-l" ||
		doc.Keys[1].Status.KeyID != "team-l" || doc.Keys[1].Status.Spend.TokensToday != today || doc.Keys[1].Limits.TokensPerMonth != 900000 {
		t.Errorf("list --json: exit %d\n%s", code, out)
	}
}

func TestModelLimitFlag(t *testing.T) {
	m := modelLimits{}
	for _, s := range []string{"llama3:tokens_per_day=5, concurrent=2", "qwen:7b:requests-per-minute=9", "old:none"} {
		if err := m.Set(s); err != nil {
			t.Fatalf("%q: %v", s, err)
		}
	}
	raw, _ := json.Marshal(m)
	if want := `{"llama3":{"concurrent":2,"tokens_per_day":5},"old":null,"qwen:7b":{"requests_per_minute":9}}`; string(raw) != want {
		t.Errorf("got %s, want %s", raw, want)
	}
	for _, bad := range []string{"llama3", "llama3:", "llama3:day", "llama3:tokens_per_year=1", "llama3:concurrent=1.5"} {
		if err := m.Set(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}
