package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func write(t *testing.T, yaml string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "drover.yaml")
	if err := os.WriteFile(p, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestLoadFileEnvAndDefaults(t *testing.T) {
	p := write(t, `
listen: 127.0.0.1:9000
backends:
  - name: gpu1
    url: http://10.0.0.1:11434/
    api_key: ${GPU1_KEY}
    max_concurrency: 2
  - url: http://10.0.0.2:11434
    type: openai
routing:
  queue:
    max_wait: 5s
auth:
  keys:
    - id: team-a
      key: ${TEAM_A}
`)
	cfg, err := Load(p, []string{"GPU1_KEY=s3cr3t:with:colons", "TEAM_A=abcdefghij", "DROVER_ROUTING_MAX_CONCURRENCY=8", "DROVER_BACKENDS_1_WEIGHT=5", "DROVER_ROUTING_QUEUE_MAX_LENGTH=7"})
	if err != nil {
		t.Fatal(err)
	}
	b := cfg.Backends
	if b[0].APIKey.Reveal() != "s3cr3t:with:colons" || b[0].URL != "http://10.0.0.1:11434" || b[0].Type != "ollama" {
		t.Fatalf("backend 0: %+v", b[0])
	}
	if b[1].Name != "10.0.0.2:11434" || b[1].Weight != 5 || b[1].Type != "openai" {
		t.Fatalf("backend 1: %+v", b[1])
	}
	if cfg.Routing.MaxConcurrency != 8 || cfg.Routing.Queue.MaxLength != 7 || cfg.Routing.Queue.MaxWait != 5*time.Second {
		t.Fatalf("routing: %+v", cfg.Routing)
	}
	if cfg.Cache.ModelsTTL != 5*time.Minute || cfg.NATS.Partitions != 8 {
		t.Fatal("defaults not applied")
	}
	if s := b[0].APIKey.String(); strings.Contains(s, "s3cr3t") {
		t.Fatal("secret printed")
	}
}

func TestShorthands(t *testing.T) {
	cfg, err := Load("", []string{"DROVER_BACKENDS=http://a:11434, http://b:11434", "DROVER_AUTH_KEYS=web:0123456789,cli:abcdefghij"})
	if err != nil {
		t.Fatal(err)
	}
	if len(cfg.Backends) != 2 || cfg.Backends[1].Name != "b:11434" || len(cfg.Auth.Keys) != 2 || cfg.Auth.Keys[1].ID != "cli" {
		t.Fatalf("%+v %+v", cfg.Backends, cfg.Auth)
	}
}

func TestErrorsNameTheKey(t *testing.T) {
	tests := []struct {
		name, yaml string
		env        []string
		want       string
	}{
		{"bad url", "backends: [{url: 'ftp://x'}]", nil, "backends[0].url: must be an http or https URL"},
		{"missing url", "backends: [{name: a}]", nil, "backends[0].url: is required"},
		{"bad type", "backends: [{url: 'http://x', type: vllm}]", nil, "backends[0].type: must be ollama or openai"},
		{"duplicate name", "backends: [{url: 'http://x', name: a}, {url: 'http://y', name: a}]", nil, "backends[1].name"},
		{"unset secret", "backends: [{url: 'http://x', api_key: '${NOPE}'}]", nil, "environment variable NOPE is not set"},
		{"unknown key", "listne: x", nil, "field listne not found"},
		{"negative cap", "routing: {max_concurrency: -1}", nil, "routing.max_concurrency: must be positive"},
		{"stale below ttl", "cache: {models_ttl: 10m, models_stale: 1m}", nil, "cache.models_stale"},
		{"short key", "auth: {keys: [{id: a, key: short}]}", nil, "auth.keys[0].key: must be at least 8 characters"},
		{"bad env duration", "", []string{"DROVER_ROUTING_QUEUE_MAX_WAIT=soon"}, "DROVER_ROUTING_QUEUE_MAX_WAIT: want a duration"},
		{"unknown env key", "", []string{"DROVER_ROUTNG_MAX_CONCURRENCY=3"}, "DROVER_ROUTNG_MAX_CONCURRENCY: no such configuration key"},
		{"alias to unknown backend", "backends: [{url: 'http://x'}]\naliases: {big: [{backend: nope, model: m}]}", nil, "aliases.big[0].backend"},
		{"bad log level", "log_level: loud", nil, "log_level: must be"},
		{"too many nats replicas", "nats: {replicas: 6}", nil, "nats.replicas: must be 1 to 5"},
		{"negative nats replicas", "", []string{"DROVER_NATS_REPLICAS=-1"}, "nats.replicas: must be 1 to 5"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Load(write(t, tt.yaml), tt.env)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("got %v, want it to contain %q", err, tt.want)
			}
		})
	}
}

func TestSecretNeverInErrors(t *testing.T) {
	_, err := Load(write(t, "auth: {keys: [{id: a, key: '${K}'}, {id: b, key: '${K}'}]}"), []string{"K=supersecretvalue"})
	if err == nil || strings.Contains(err.Error(), "supersecretvalue") {
		t.Fatalf("got %v", err)
	}
}

func TestAuthKeysShorthandWithRoles(t *testing.T) {
	c, err := Load("", []string{"DROVER_AUTH_KEYS=ops:secret-ops:admin, team-a:sec:ret-a ,team-b:secret-b:client"})
	if err != nil {
		t.Fatal(err)
	}
	got := c.Auth.Keys
	want := []APIKey{{ID: "ops", Key: "secret-ops", Role: "admin"}, {ID: "team-a", Key: "sec:ret-a", Role: "client"}, {ID: "team-b", Key: "secret-b", Role: "client"}}
	if len(got) != len(want) {
		t.Fatalf("keys %+v", got)
	}
	for i := range want {
		if got[i].ID != want[i].ID || got[i].Key != want[i].Key || got[i].Role != want[i].Role {
			t.Fatalf("key %d: got %+v want %+v", i, got[i], want[i])
		}
	}
}

func TestAuthErrorsNameTheKey(t *testing.T) {
	_, err := FromStruct(&Config{
		Auth: Auth{Keys: []APIKey{{ID: "a", Key: "12345678", Role: "root", Models: []string{"llama[", ""}}}},
		CORS: CORS{Origins: []string{"example.com"}},
		NATS: NATS{User: "proxy", CredsFile: "/x.creds"},
	})
	for _, want := range []string{"auth.keys[0].role: must be client or admin", "auth.keys[0].models[0]", "auth.keys[0].models[1]", "cors.origins[0]", "nats: set at most one"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Fatalf("want %q in %v", want, err)
		}
	}
}

func TestOpenAccessOnlyOnLoopback(t *testing.T) {
	for _, tc := range []struct {
		listen string
		keys   bool
		open   bool
		ok     bool
	}{
		{"127.0.0.1:12434", false, false, true},
		{"[::1]:12434", false, false, true},
		{"localhost:12434", false, false, true},
		{":12434", false, false, false},
		{"0.0.0.0:12434", false, false, false},
		{":12434", false, true, true},
		{":12434", true, false, true},
	} {
		c := &Config{Listen: tc.listen, Auth: Auth{Open: tc.open}}
		if tc.keys {
			c.Auth.Keys = []APIKey{{ID: "a", Key: "12345678"}}
		}
		err := c.CheckOpenAccess()
		if (err == nil) != tc.ok {
			t.Errorf("%+v: err %v", tc, err)
		}
		if err != nil && !strings.Contains(err.Error(), "auth.open") {
			t.Errorf("error does not say how to fix it: %v", err)
		}
	}
}

// The deployments' own variables may sit in a service's environment (a
// shared .env): they are not typos of config keys.
func TestDeploymentVariablesIgnored(t *testing.T) {
	_, err := Load("", []string{"DROVER_ADMIN_KEY=x", "DROVER_NATS_PROXY_PASSWORD=y", "DROVER_NATS_AGGREGATOR_PASSWORD=z", "DROVER_CONFIG=/nowhere"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Load("", []string{"DROVER_ADMIN_KEYS=x"}); err == nil {
		t.Fatal("a misspelt variable was accepted")
	}
}
