package natstest

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/nats-io/nats-server/v2/server"
)

// Passwords StartShipped gives the shipped config's users.
const (
	ProxyPassword      = "proxy-test-password"
	AggregatorPassword = "aggregator-test-password"
)

// StartShipped starts a server from the deploy/nats/nats.conf this
// repository ships (users, permissions, JetStream limits), with only what
// a test must change: a loopback address on a free port, no monitoring
// port, a temporary store, and the users' passwords (ProxyPassword,
// AggregatorPassword) in the environment the file reads them from while
// it is read. It uses t.Setenv, so the test must not be parallel.
func StartShipped(t testing.TB) *Server {
	t.Helper()
	return StartConfig(t, ShippedConfig(t))
}

// StartConfig is StartShipped with another config file.
func StartConfig(t testing.TB, path string) *Server {
	t.Helper()
	// The variables are the server's only: set for reading the file, then
	// unset, so that services the test starts do not inherit them (as in
	// compose, where only the nats container has them).
	for k, v := range map[string]string{"DROVER_NATS_PROXY_PASSWORD": ProxyPassword, "DROVER_NATS_AGGREGATOR_PASSWORD": AggregatorPassword} {
		t.Setenv(k, v)
		defer os.Unsetenv(k)
	}
	opts, err := server.ProcessConfigFile(path)
	if err != nil {
		t.Fatalf("natstest: loading %s: %v", path, err)
	}
	opts.Host, opts.Port, opts.HTTPPort = "127.0.0.1", freePort(t), 0
	opts.StoreDir = t.TempDir()
	opts.NoLog, opts.NoSigs = true, true
	s := &Server{t: t, opts: *opts}
	s.start()
	t.Cleanup(s.Stop)
	return s
}

// ShippedConfig is the path of deploy/nats/nats.conf, found from the test's
// working directory upwards.
func ShippedConfig(t testing.TB) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		p := filepath.Join(dir, "deploy", "nats", "nats.conf")
		if _, err := os.Stat(p); err == nil {
			return p
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatal("natstest: deploy/nats/nats.conf not found above the working directory")
		}
		dir = parent
	}
}
