package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// Whatever the file and one DROVER_ variable say, Load returns a config
// that validates or an error; it never panics.
func FuzzLoad(f *testing.F) {
	f.Add("listen: ':12434'\nbackends: [{url: 'http://a:11434', max_concurrency: 2}]\nauth: {keys: [{id: a, key: 'k-0123456789-secret'}]}\n", "DROVER_ROUTING_QUEUE_MAX_WAIT", "5s")
	f.Add("server: {max_body_bytes: 1048576, body_timeout: 1s}\n", "DROVER_SERVER_MAX_EVENT_BYTES", "4096")
	f.Add("backends: [{url: '${NOPE}'}]\n", "DROVER_BACKENDS", "http://a, http://b")
	f.Add("routing: {queue: {max_length: -1}}\naliases: {x: [{backend: b, model: m}]}\n", "DROVER_AUTH_KEYS", "a:b:admin")
	f.Add("nats: {url: nats://n, user: u, password: p, tls: {cert_file: c}}\n", "DROVER_BACKENDS_3_URL", "x")
	f.Fuzz(func(t *testing.T, yaml, envName, envVal string) {
		p := filepath.Join(t.TempDir(), "drover.yaml")
		if err := os.WriteFile(p, []byte(yaml), 0o600); err != nil {
			t.Fatal(err)
		}
		var env []string
		if strings.HasPrefix(envName, EnvPrefix) && !strings.Contains(envName, "=") {
			env = []string{envName + "=" + envVal}
		}
		cfg, err := Load(p, env)
		if err != nil {
			return
		}
		if err := cfg.Validate(); err != nil {
			t.Fatalf("Load returned a config that does not validate: %v", err)
		}
	})
}
