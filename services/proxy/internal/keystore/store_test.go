package keystore

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/goleak"

	"github.com/droverhq/drover/pkg/apikey"
	"github.com/droverhq/drover/testkit/natstest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const bucket = "drover_keys"

func connect(t *testing.T, url string) *nats.Conn {
	t.Helper()
	nc, err := nats.Connect(url, nats.RetryOnFailedConnect(true), nats.MaxReconnects(-1), nats.ReconnectWait(20*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	return nc
}

// replica is one Store and the sets its OnChange received, with the log it
// wrote.
type replica struct {
	*Store
	mu   sync.Mutex
	sets [][]apikey.Record
	logs *syncBuffer
}

func (r *replica) last() (ids []string, ok bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.sets) == 0 {
		return nil, false
	}
	for _, k := range r.sets[len(r.sets)-1] {
		ids = append(ids, k.ID)
	}
	return ids, true
}

func open(t *testing.T, nc *nats.Conn, stateFile string) *replica {
	t.Helper()
	r := &replica{logs: &syncBuffer{}}
	r.Store = Open(Options{Conn: nc, Bucket: bucket, StateFile: stateFile, Retry: 50 * time.Millisecond, FirstRead: 5 * time.Second,
		Log: slog.New(slog.NewTextHandler(r.logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
		OnChange: func(recs []apikey.Record) {
			r.mu.Lock()
			r.sets = append(r.sets, recs)
			r.mu.Unlock()
		}})
	t.Cleanup(r.Close)
	return r
}

// waitIDs waits until r's latest set is exactly ids.
func waitIDs(t *testing.T, r *replica, within time.Duration, ids ...string) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		got, _ := r.last()
		if slices.Equal(got, ids) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("key set %q, want %q after %v", got, ids, within)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func TestChangesReachEveryReplica(t *testing.T) {
	ns := natstest.Start(t)
	a := open(t, connect(t, ns.URL()), "")
	b := open(t, connect(t, ns.URL()), "")
	waitIDs(t, b, time.Second)

	ctx := t.Context()
	secret := apikey.NewSecret()
	rec, err := a.Create(ctx, apikey.Record{ID: "team-a", Role: apikey.RoleClient, Models: []string{"llama3*"}}, secret)
	if err != nil || rec.Digest != apikey.Digest(secret) || rec.Source != "bucket" || rec.Created.IsZero() {
		t.Fatalf("create: %+v %v", rec, err)
	}
	// The writer's own set has the key when Create returns.
	if got, _ := a.last(); !slices.Equal(got, []string{"team-a"}) {
		t.Errorf("writer's set right after Create: %q", got)
	}
	waitIDs(t, b, time.Second, "team-a")
	if _, err := a.Create(ctx, apikey.Record{ID: "team-a", Role: apikey.RoleAdmin}, apikey.NewSecret()); !errors.Is(err, ErrExists) {
		t.Errorf("second create: %v, want ErrExists", err)
	}

	if _, err := b.Change(ctx, "team-a", func(r *apikey.Record) error { r.Role = apikey.RoleAdmin; return nil }); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "a to see the new role", func() bool {
		recs := a.Records()
		return len(recs) == 1 && recs[0].Role == apikey.RoleAdmin && slices.Equal(recs[0].Models, []string{"llama3*"})
	})

	if err := b.Revoke(ctx, "team-a"); err != nil {
		t.Fatal(err)
	}
	waitIDs(t, a, time.Second)
	if err := b.Revoke(ctx, "team-a"); !errors.Is(err, ErrNotFound) {
		t.Errorf("revoking twice: %v, want ErrNotFound", err)
	}
	if _, err := b.Change(ctx, "nobody", func(*apikey.Record) error { return nil }); !errors.Is(err, ErrNotFound) {
		t.Errorf("changing an unknown key: %v, want ErrNotFound", err)
	}
	// A revoked id may be used again.
	if _, err := a.Create(ctx, apikey.Record{ID: "team-a", Role: apikey.RoleClient}, apikey.NewSecret()); err != nil {
		t.Errorf("re-creating a revoked id: %v", err)
	}
	waitIDs(t, b, time.Second, "team-a")

	// What the bucket holds is the digest, never the secret.
	kv := bucketOf(t, ns.URL())
	e, err := kv.Get(ctx, "team-a")
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(e.Value()), apikey.SecretPrefix) || !strings.Contains(string(e.Value()), `"digest":"`) {
		t.Errorf("stored record %s", e.Value())
	}
}

// Two admins changing one key: the second write, based on a revision that
// is no longer current, is refused and writes nothing.
func TestConcurrentChangeConflicts(t *testing.T) {
	ns := natstest.Start(t)
	a := open(t, connect(t, ns.URL()), "")
	b := open(t, connect(t, ns.URL()), "")
	ctx := t.Context()
	if _, err := a.Create(ctx, apikey.Record{ID: "k", Role: apikey.RoleClient}, apikey.NewSecret()); err != nil {
		t.Fatal(err)
	}
	_, err := a.Change(ctx, "k", func(r *apikey.Record) error {
		// Meanwhile another admin on another replica changes it.
		if _, err := b.Change(ctx, "k", func(r *apikey.Record) error { r.Models = []string{"qwen*"}; return nil }); err != nil {
			t.Errorf("inner change: %v", err)
		}
		r.Role = apikey.RoleAdmin
		return nil
	})
	if !errors.Is(err, ErrConflict) {
		t.Fatalf("outer change: %v, want ErrConflict", err)
	}
	waitFor(t, "the inner change only", func() bool {
		recs := a.Records()
		return len(recs) == 1 && recs[0].Role == apikey.RoleClient && slices.Equal(recs[0].Models, []string{"qwen*"})
	})
}

func TestInvalidEntriesAreSkipped(t *testing.T) {
	ns := natstest.Start(t)
	r := open(t, connect(t, ns.URL()), "")
	kv := bucketOf(t, ns.URL())
	ctx := t.Context()
	good, _ := json.Marshal(apikey.Record{ID: "good", Role: apikey.RoleClient, Digest: apikey.Digest("x")})
	for key, val := range map[string]string{
		"good":     string(good),
		"notjson":  "{",
		"badrole":  fmt.Sprintf(`{"id":"badrole","role":"root","digest":%q}`, apikey.Digest("y")),
		"nodigest": `{"id":"nodigest","role":"client"}`,
		"renamed":  fmt.Sprintf(`{"id":"other","role":"client","digest":%q}`, apikey.Digest("z")),
	} {
		if _, err := kv.Put(ctx, key, []byte(val)); err != nil {
			t.Fatal(err)
		}
	}
	waitIDs(t, r, time.Second, "good")
	waitFor(t, "four warnings", func() bool {
		return strings.Count(r.logs.String(), "skipping an invalid entry of the key bucket") >= 4
	})
	// A replica started now reads the same.
	r2 := open(t, connect(t, ns.URL()), "")
	waitIDs(t, r2, time.Second, "good")
}

// A replica that loses NATS keeps its set; one that starts while NATS is
// down serves with the saved set; both catch up when NATS is back.
func TestWithoutNATS(t *testing.T) {
	ns := natstest.Start(t)
	state := filepath.Join(t.TempDir(), "data", "keys.json")
	ctx := t.Context()
	first := open(t, connect(t, ns.URL()), state)
	var secrets []string
	for _, id := range []string{"k1", "k2", "k3"} {
		s := apikey.NewSecret()
		secrets = append(secrets, s)
		if _, err := first.Create(ctx, apikey.Record{ID: id, Role: apikey.RoleClient, Models: []string{"m*"}}, s); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, "the state file to hold three keys", func() bool {
		raw, _ := os.ReadFile(state)
		return strings.Count(string(raw), `"digest"`) == 3
	})
	fi, err := os.Stat(state)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("state file %v %v, want mode 0600", fi, err)
	}
	raw, _ := os.ReadFile(state)
	for _, s := range secrets {
		if bytes.Contains(raw, []byte(s)) {
			t.Fatal("a secret is in the state file")
		}
	}
	first.Close()

	// Another replica revokes k3 while the first is away.
	other := open(t, connect(t, ns.URL()), "")
	if err := other.Revoke(ctx, "k3"); err != nil {
		t.Fatal(err)
	}
	ns.Stop()
	if got, _ := other.last(); !slices.Equal(got, []string{"k1", "k2"}) {
		t.Fatalf("set before losing NATS: %q", got)
	}

	// Restarted while NATS is down: the saved set is in force when Open
	// returns, and the log says so.
	restarted := open(t, connect(t, ns.URL()), state)
	if got, ok := restarted.last(); !ok || !slices.Equal(got, []string{"k1", "k2", "k3"}) {
		t.Fatalf("set at start without NATS: %q (%v)", got, ok)
	}
	if l := restarted.logs.String(); !strings.Contains(l, "serving with the key set saved in the state file") || !strings.Contains(l, "age=") {
		t.Errorf("log does not say it serves the saved set:\n%s", l)
	}
	// Retrying for a while changes nothing, and the outage is one warning.
	waitFor(t, "three failed attempts to reach the bucket", func() bool {
		return strings.Count(restarted.logs.String(), "key bucket unreachable") >= 3
	})
	if n := strings.Count(restarted.logs.String(), `level=WARN msg="key bucket unreachable`); n != 1 {
		t.Errorf("%d warnings for one outage:\n%s", n, restarted.logs.String())
	}
	if got, _ := restarted.last(); !slices.Equal(got, []string{"k1", "k2", "k3"}) {
		t.Fatalf("set while NATS is down: %q", got)
	}
	if got, _ := other.last(); !slices.Equal(got, []string{"k1", "k2"}) {
		t.Fatalf("a replica that lost NATS changed its set: %q", got)
	}

	// NATS back: the restarted replica learns of the revocation, and a
	// change made now reaches both.
	ns.Restart()
	waitIDs(t, restarted, 10*time.Second, "k1", "k2")
	if err := restarted.Revoke(ctx, "k1"); err != nil {
		t.Fatal(err)
	}
	waitIDs(t, other, 10*time.Second, "k2")
	waitFor(t, "the state file to follow", func() bool {
		raw, _ := os.ReadFile(state)
		return strings.Count(string(raw), `"digest"`) == 1
	})
}

func TestNoStateFileForAnEmptySet(t *testing.T) {
	ns := natstest.Start(t)
	state := filepath.Join(t.TempDir(), "keys.json")
	r := open(t, connect(t, ns.URL()), state)
	if !r.WaitSynced(t.Context()) {
		t.Fatal("not synced")
	}
	if _, err := os.Stat(state); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("state file for no keys: %v", err)
	}
}

func TestDamagedStateFileIsIgnored(t *testing.T) {
	state := filepath.Join(t.TempDir(), "keys.json")
	if err := os.WriteFile(state, []byte(`{"bucket":"drover_keys","keys":[{"id":"x","role":"client","digest":"nothex"}]}`), 0o600); err != nil {
		t.Fatal(err)
	}
	r := open(t, connect(t, "nats://"+closedAddr(t)), state)
	if got, _ := r.last(); len(got) != 0 {
		t.Errorf("invalid saved key in force: %q", got)
	}
	if !strings.Contains(r.logs.String(), "skipping an invalid key in the state file") {
		t.Errorf("log:\n%s", r.logs.String())
	}
}

func bucketOf(t *testing.T, url string) jetstream.KeyValue {
	t.Helper()
	js, err := jetstream.New(connect(t, url))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	kv, err := js.KeyValue(ctx, bucket)
	if err != nil {
		t.Fatal(err)
	}
	return kv
}

// closedAddr is an address where nothing listens.
func closedAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !cond(); {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
