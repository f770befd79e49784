package server

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/droverhq/drover/pkg/apikey"
	"github.com/droverhq/drover/pkg/config"
	"github.com/droverhq/drover/testkit/natstest"
	"github.com/droverhq/drover/testkit/ollamatest"
)

// keyReplica is one replica of a keys test: its server, its URL, its state
// file and everything it logged.
type keyReplica struct {
	srv   *Server
	url   string
	state string
	logs  *lockedBuffer
}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// keyFake starts one fake Ollama for the keys tests.
func keyFake(t *testing.T) *ollamatest.Server {
	t.Helper()
	f := ollamatest.New(ollamatest.Config{})
	if err := f.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(f.Close)
	return f
}

// startKeyReplica runs a replica with the config file's admin key "boot",
// its key state in state, its log captured at debug level, and NATS at
// natsURL (which may be down).
func startKeyReplica(t *testing.T, name, natsURL, admin, state string, fake *ollamatest.Server) *keyReplica {
	t.Helper()
	cfg := &config.Config{Replica: name, Backends: []config.Backend{{Name: "a", URL: fake.URL()}}}
	cfg.Auth.Keys = []config.APIKey{{ID: "boot", Key: config.Secret(admin), Role: apikey.RoleAdmin}}
	cfg.Auth.StateFile = state
	loaded, err := config.FromStruct(cfg)
	if err != nil {
		t.Fatal(err)
	}
	nc, err := nats.Connect(natsURL, nats.RetryOnFailedConnect(true), nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond), nats.NoEcho())
	if err != nil {
		t.Fatal(err)
	}
	r := &keyReplica{state: state, logs: &lockedBuffer{}}
	r.srv = New(loaded, slog.New(slog.NewTextHandler(r.logs, &slog.HandlerOptions{Level: slog.LevelDebug})), Options{SyncConn: nc})
	hs := httptest.NewServer(r.srv.Handler())
	r.url = hs.URL
	t.Cleanup(func() { hs.CloseClientConnections(); hs.Close(); r.srv.Close(); nc.Close() })
	return r
}

// buildDroverctl builds the real droverctl for the test.
func buildDroverctl(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	out, err := exec.Command("go", "build", "-o", dir+"/", "github.com/droverhq/drover/services/droverctl/cmd/droverctl").CombinedOutput()
	if err != nil {
		t.Fatalf("building droverctl: %v\n%s", err, out)
	}
	return filepath.Join(dir, "droverctl")
}

// ctl runs droverctl with the admin key in its environment.
func ctl(t *testing.T, bin, admin string, args ...string) (string, error) {
	t.Helper()
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(), "DROVERCTL_API_KEY="+admin, "OLLAMA_HOST=")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Logf("droverctl %v: %v\n%s", args, err, stderr.String())
	}
	return string(out), err
}

// status is the answer of url+path to a request with key.
func status(t *testing.T, c *http.Client, method, url, key, body string) int {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+key)
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

// createKey makes a key with droverctl and returns its secret.
func createKey(t *testing.T, bin, admin, url, id string, extra ...string) string {
	t.Helper()
	out, err := ctl(t, bin, admin, append([]string{"keys", "create", id, "--url", url, "--json"}, extra...)...)
	if err != nil {
		t.Fatalf("keys create %s: %v", id, err)
	}
	var doc struct{ Secret string }
	if err := json.Unmarshal([]byte(out), &doc); err != nil || !strings.HasPrefix(doc.Secret, apikey.SecretPrefix) {
		t.Fatalf("keys create %s printed %q (%v)", id, out, err)
	}
	return doc.Secret
}

// TestKeysFleetWide: three replicas over one real NATS. A key made with
// droverctl on one works on all three with its role and models; revoked
// with droverctl, it stops working on all three within a second (measured
// several times); no secret reaches the bucket, a state file or a log.
func TestKeysFleetWide(t *testing.T) {
	ns := natstest.Start(t)
	fake := keyFake(t)
	admin := apikey.NewSecret()
	dir := t.TempDir()
	var reps []*keyReplica
	for i := range 3 {
		reps = append(reps, startKeyReplica(t, string(rune('p'+i)), ns.URL(), admin, filepath.Join(dir, string(rune('p'+i)), "keys.json"), fake))
	}
	bin := buildDroverctl(t)
	c := &http.Client{Timeout: 5 * time.Second}
	var secrets []string

	t.Run("created on one, works on all with its role and models", func(t *testing.T) {
		client := createKey(t, bin, admin, reps[1].url, "team-b", "--models", "tiny2*")
		adm := createKey(t, bin, admin, reps[2].url, "ops", "--role", "admin")
		secrets = append(secrets, client, adm)
		chat := func(model string) string {
			return `{"model":"` + model + `","messages":[{"role":"user","content":"hi"}],"stream":false}`
		}
		for _, r := range reps {
			for _, tc := range []struct {
				method, path, key, body string
				want                    int
			}{
				{"POST", "/api/chat", client, chat("tiny2"), 200},
				{"POST", "/api/chat", client, chat("tiny"), 404}, // outside its models
				{"GET", "/api/keys", client, "", 403},            // a client is no admin
				{"POST", "/api/chat", adm, chat("tiny"), 200},
				{"GET", "/api/keys", adm, "", 200},
				{"GET", "/api/version", "drv_wrong", "", 401},
			} {
				if got := status(t, c, tc.method, r.url+tc.path, tc.key, tc.body); got != tc.want {
					t.Errorf("%s: %s %s: %d, want %d", r.srv.Config.Replica, tc.method, tc.path, got, tc.want)
				}
			}
		}
		out, err := ctl(t, bin, admin, "keys", "list", "--url", reps[0].url)
		if err != nil || !strings.Contains(out, "team-b") || !strings.Contains(out, "tiny2*") || !strings.Contains(out, "boot") {
			t.Errorf("keys list: %v\n%s", err, out)
		}
		// A change made with droverctl set reaches every replica too.
		if _, err := ctl(t, bin, admin, "keys", "set", "team-b", "--models=", "--url", reps[0].url); err != nil {
			t.Fatal(err)
		}
		for _, r := range reps {
			waitUntil(t, "team-b to reach every model on "+r.srv.Config.Replica, func() bool {
				return status(t, c, "POST", r.url+"/api/chat", client, chat("tiny")) == 200
			})
		}
	})

	t.Run("revocation reaches every replica within a second", func(t *testing.T) {
		const runs = 5
		var worst time.Duration
		for i := range runs {
			id := "rev-" + string(rune('a'+i))
			secret := createKey(t, bin, admin, reps[i%3].url, id)
			secrets = append(secrets, secret)
			for _, r := range reps {
				waitUntil(t, id+" to work on "+r.srv.Config.Replica, func() bool {
					return status(t, c, "GET", r.url+"/api/version", secret, "") == 200
				})
			}
			started := time.Now()
			if out, err := ctl(t, bin, admin, "keys", "revoke", id, "--url", reps[(i+1)%3].url); err != nil || !strings.Contains(out, "revoked key "+id) {
				t.Fatalf("keys revoke: %v %q", err, out)
			}
			returned := time.Now()
			took := make([]time.Duration, len(reps))
			for pending := len(reps); pending > 0; {
				for j, r := range reps {
					if took[j] != 0 {
						continue
					}
					if status(t, c, "GET", r.url+"/api/version", secret, "") == http.StatusUnauthorized {
						took[j] = max(time.Since(returned), time.Nanosecond)
						pending--
					}
				}
				if time.Since(returned) > 5*time.Second {
					t.Fatalf("run %d: still accepted 5s after revoke returned: %v", i, took)
				}
				time.Sleep(2 * time.Millisecond)
			}
			last := slices.Max(took)
			worst = max(worst, last)
			t.Logf("run %d: revoke command took %v; after it returned, 401 on all three replicas within %v (per replica %v)",
				i, returned.Sub(started).Round(time.Millisecond), last, took)
		}
		t.Logf("revocation: worst of %d runs, %v from the revoke command returning to 401 on all three replicas", runs, worst)
		if worst > time.Second {
			t.Errorf("revocation took %v to reach every replica, want within a second", worst)
		}
	})

	t.Run("rotate replaces the secret everywhere", func(t *testing.T) {
		old := secrets[1] // ops
		out, err := ctl(t, bin, admin, "keys", "rotate", "ops", "--url", reps[0].url, "--json")
		var doc struct{ Secret string }
		if err != nil || json.Unmarshal([]byte(out), &doc) != nil || doc.Secret == "" || doc.Secret == old {
			t.Fatalf("rotate: %v %q", err, out)
		}
		secrets = append(secrets, doc.Secret)
		for _, r := range reps {
			waitUntil(t, "the old secret to stop on "+r.srv.Config.Replica, func() bool {
				return status(t, c, "GET", r.url+"/api/keys", old, "") == 401 && status(t, c, "GET", r.url+"/api/keys", doc.Secret, "") == 200
			})
		}
	})

	t.Run("no secret in the bucket, state files or logs", func(t *testing.T) {
		secrets := append(secrets, admin)
		places := streamMessages(t, ns.URL())
		if len(places) == 0 {
			t.Fatal("read nothing from the bucket's stream")
		}
		for _, r := range reps {
			raw, err := os.ReadFile(r.state)
			if err != nil || !strings.Contains(string(raw), `"digest"`) {
				t.Fatalf("state file %s: %v %q", r.state, err, raw)
			}
			places = append(places, string(raw), r.logs.String())
		}
		if !strings.Contains(reps[1].logs.String(), "API key created") {
			t.Fatalf("nothing logged about keys:\n%s", reps[1].logs.String())
		}
		for _, s := range secrets {
			for i, p := range places {
				if strings.Contains(p, s) {
					t.Errorf("secret %.8s… found in place %d:\n%s", s, i, p)
				}
			}
		}
	})
}

// streamMessages returns every message the key bucket's stream holds.
func streamMessages(t *testing.T, url string) []string {
	t.Helper()
	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	st, err := js.Stream(ctx, "KV_"+config.DefaultKeysBucket)
	if err != nil {
		t.Fatal(err)
	}
	info, err := st.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for seq := info.State.FirstSeq; seq <= info.State.LastSeq; seq++ {
		m, err := st.GetMsg(ctx, seq)
		if err != nil {
			continue // removed (history 1)
		}
		out = append(out, string(m.Data))
	}
	return out
}

// TestKeysStartWithoutNATS: a replica started while NATS is down serves
// with the key set its state file kept from an earlier run, and says so.
func TestKeysStartWithoutNATS(t *testing.T) {
	ns := natstest.Start(t)
	fake := keyFake(t)
	admin := apikey.NewSecret()
	state := filepath.Join(t.TempDir(), "keys.json")
	c := &http.Client{Timeout: 5 * time.Second}

	// The earlier run: NATS up, a key made through the API.
	earlier := startKeyReplica(t, "p", ns.URL(), admin, state, fake)
	req, _ := http.NewRequestWithContext(t.Context(), "POST", earlier.url+"/api/keys", strings.NewReader(`{"id":"team-a","models":["tiny"]}`))
	req.Header.Set("Authorization", "Bearer "+admin)
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	var created struct{ Secret string }
	json.NewDecoder(resp.Body).Decode(&created) //nolint:errcheck // checked below
	resp.Body.Close()
	if resp.StatusCode != 201 || created.Secret == "" {
		t.Fatalf("create: %d", resp.StatusCode)
	}
	waitUntil(t, "the state file", func() bool {
		raw, _ := os.ReadFile(state)
		return strings.Contains(string(raw), `"team-a"`)
	})

	// This run: NATS is not there (nothing listens at its address).
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	down := "nats://" + l.Addr().String()
	l.Close()
	started := time.Now()
	r := startKeyReplica(t, "q", down, admin, state, fake)
	if d := time.Since(started); d > 2*time.Second {
		t.Errorf("New took %v without NATS", d)
	}
	if got := status(t, c, "GET", r.url+"/api/version", created.Secret, ""); got != 200 {
		t.Errorf("saved key: %d, want 200", got)
	}
	if got := status(t, c, "GET", r.url+"/api/version", apikey.NewSecret(), ""); got != 401 {
		t.Errorf("unknown key: %d, want 401", got)
	}
	chat := `{"model":"tiny2","messages":[{"role":"user","content":"hi"}],"stream":false}`
	if got := status(t, c, "POST", r.url+"/api/chat", created.Secret, chat); got != 404 {
		t.Errorf("saved key outside its models: %d, want 404", got)
	}
	if l := r.logs.String(); !strings.Contains(l, "serving with the key set saved in the state file") || !strings.Contains(l, "age=") {
		t.Errorf("the replica does not say it serves the saved set:\n%s", l)
	}
	// Changes need NATS: refused with 503, the saved set stays in force.
	if got := status(t, c, "POST", r.url+"/api/keys", admin, `{"id":"new"}`); got != 503 {
		t.Errorf("create without NATS: %d, want 503", got)
	}
	if got := status(t, c, "GET", r.url+"/api/version", created.Secret, ""); got != 200 {
		t.Errorf("saved key after a failed change: %d, want 200", got)
	}
}

// waitUntil polls cond every few milliseconds for up to 10s.
func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !cond(); {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
