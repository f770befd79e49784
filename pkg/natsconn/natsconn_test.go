package natsconn

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nkeys"
	"go.uber.org/goleak"

	"github.com/droverhq/drover/pkg/config"
	"github.com/droverhq/drover/testkit/natstest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// logBuffer collects a logger's output across goroutines.
type logBuffer struct {
	mu sync.Mutex // guards b
	b  strings.Builder
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestInboxPrefix(t *testing.T) {
	for in, want := range map[string]string{
		"drover-proxy":      "_INBOX_drover_proxy",
		"drover-aggregator": "_INBOX_drover_aggregator",
		"a.b*c>d":           "_INBOX_a_b_c_d",
	} {
		if got := InboxPrefix(in); got != want {
			t.Errorf("InboxPrefix(%q) = %q, want %q", in, got, want)
		}
	}
}

// A connection's replies arrive on its service's inbox, the only one the
// shipped config lets that user subscribe to: a request works.
func TestRepliesUseTheServiceInbox(t *testing.T) {
	srv := natstest.StartShipped(t)
	nc, err := Connect(config.NATS{URL: srv.URL(), User: "proxy", Password: natstest.ProxyPassword}, "drover-proxy r1 usage", slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	if in := nc.NewInbox(); !strings.HasPrefix(in, "_INBOX_drover_proxy.") {
		t.Fatalf("inbox %s, want one under _INBOX_drover_proxy", in)
	}
	if _, err := nc.Request("$JS.API.INFO", nil, 5*time.Second); err != nil {
		t.Fatalf("a request as the proxy: %v", err)
	}
}

// NATS down at start: Connect returns at once and the connection comes up
// when the server does, so that services start in any order.
func TestConnectWhileNATSIsDown(t *testing.T) {
	srv := natstest.StartShipped(t)
	srv.Stop()
	var logs logBuffer
	nc, err := Connect(config.NATS{URL: srv.URL(), User: "aggregator", Password: natstest.AggregatorPassword},
		"drover-aggregator a1", slog.New(slog.NewTextHandler(&logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	if nc.IsConnected() || !strings.Contains(logs.String(), "NATS not reachable yet") {
		t.Fatalf("connected %v to a stopped server; log: %s", nc.IsConnected(), logs.String())
	}
	srv.Restart()
	waitFor(t, "the connection", nc.IsConnected)
}

// Wrong credentials against a running server are a configuration error,
// reported at once with the keys to check and without the password.
func TestRefusedCredentialsFailFast(t *testing.T) {
	srv := natstest.StartShipped(t)
	const secret = "not-the-password-0123"
	_, err := Connect(config.NATS{URL: srv.URL(), User: "proxy", Password: secret}, "drover-proxy r1", slog.New(slog.DiscardHandler))
	if !errors.Is(err, nats.ErrAuthorization) || !strings.Contains(err.Error(), "nats.user and nats.password") {
		t.Fatalf("err %v, want an authorization error naming the config keys", err)
	}
	if strings.Contains(err.Error(), secret) {
		t.Fatalf("the error shows the password: %v", err)
	}
	if _, err := Connect(config.NATS{URL: srv.URL()}, "drover-proxy r1", slog.New(slog.DiscardHandler)); !errors.Is(err, nats.ErrAuthorization) {
		t.Fatalf("anonymous: %v, want %v", err, nats.ErrAuthorization)
	}
}

// A publish the server refuses is logged as an error naming the subject,
// once however many follow within the interval (with how many were left
// out the next time), and never with the password.
func TestPermissionViolationsAreLogged(t *testing.T) {
	srv := natstest.StartShipped(t)
	var logs logBuffer
	nc, err := Connect(config.NATS{URL: srv.URL(), User: "proxy", Password: natstest.ProxyPassword}, "drover-proxy r1 sync",
		slog.New(slog.NewJSONHandler(&logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	for range 50 {
		if err := nc.Publish("drover.usage.deadletter", []byte("forged")); err != nil {
			t.Fatal(err)
		}
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the violation in the log", func() bool { return strings.Contains(logs.String(), "lacks the permission") })
	// The server answers each refused publish; the last answer has come
	// when a round trip after them has.
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	l := logs.String()
	if n := strings.Count(l, "lacks the permission"); n != 1 {
		t.Fatalf("%d log lines for 50 refusals within the interval, want 1:\n%s", n, l)
	}
	if !strings.Contains(l, `"level":"ERROR"`) || !strings.Contains(l, `drover.usage.deadletter`) || !strings.Contains(l, `"conn":"drover-proxy r1 sync"`) {
		t.Fatalf("the log line lacks its level, subject or connection:\n%s", l)
	}
	if strings.Contains(l, natstest.ProxyPassword) {
		t.Fatalf("the log shows the password:\n%s", l)
	}
}

func TestBadCredentialFilesNameTheirKey(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "missing")
	for _, c := range []struct {
		cfg config.NATS
		key string
	}{
		{config.NATS{URL: "nats://127.0.0.1:1", NKeySeedFile: missing}, "nats.nkey_seed_file"},
		{config.NATS{URL: "nats://127.0.0.1:1", CredsFile: missing}, "nats.creds_file"},
		{config.NATS{URL: "nats://127.0.0.1:1", TLS: config.TLS{CAFile: missing}}, "nats.tls.ca_file"},
		{config.NATS{URL: "nats://127.0.0.1:1", TLS: config.TLS{CertFile: missing, KeyFile: missing}}, "nats.tls.cert_file"},
	} {
		if _, err := Connect(c.cfg, "drover-proxy r1", slog.New(slog.DiscardHandler)); err == nil || !strings.HasPrefix(err.Error(), c.key) {
			t.Errorf("%+v: %v, want an error starting with %s", c.cfg, err, c.key)
		}
	}
}

// An NKey user logs in with its seed file.
func TestNKeySeedFile(t *testing.T) {
	kp, err := nkeys.CreateUser()
	if err != nil {
		t.Fatal(err)
	}
	pub, _ := kp.PublicKey()
	seed, _ := kp.Seed()
	dir := t.TempDir()
	seedFile := filepath.Join(dir, "proxy.nk")
	if err := os.WriteFile(seedFile, seed, 0o600); err != nil {
		t.Fatal(err)
	}
	conf := filepath.Join(dir, "nats.conf")
	if err := os.WriteFile(conf, []byte(fmt.Sprintf("authorization { users = [ {nkey: %s} ] }\n", pub)), 0o600); err != nil {
		t.Fatal(err)
	}
	srv := natstest.StartConfig(t, conf)
	nc, err := Connect(config.NATS{URL: srv.URL(), NKeySeedFile: seedFile}, "drover-proxy r1", slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
}

// TLS with a private CA, a server name that differs from the address, and
// a client certificate the server requires.
func TestTLSWithClientCertificate(t *testing.T) {
	dir := t.TempDir()
	ca, caKey := writeCert(t, dir, "ca", nil, nil, "drover test CA")
	writeCert(t, dir, "server", ca, caKey, "nats.internal")
	writeCert(t, dir, "client", ca, caKey, "drover-proxy")
	conf := filepath.Join(dir, "nats.conf")
	if err := os.WriteFile(conf, []byte(fmt.Sprintf(`tls {
  cert_file: %q
  key_file: %q
  ca_file: %q
  verify: true
}
`, filepath.Join(dir, "server.pem"), filepath.Join(dir, "server.key"), filepath.Join(dir, "ca.pem"))), 0o600); err != nil {
		t.Fatal(err)
	}
	srv := natstest.StartConfig(t, conf)
	tlsCfg := config.TLS{CAFile: filepath.Join(dir, "ca.pem"), ServerName: "nats.internal",
		CertFile: filepath.Join(dir, "client.pem"), KeyFile: filepath.Join(dir, "client.key")}
	nc, err := Connect(config.NATS{URL: srv.URL(), TLS: tlsCfg}, "drover-proxy r1", slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	if st, err := nc.TLSConnectionState(); err != nil || !st.HandshakeComplete {
		t.Fatalf("no TLS: %v", err)
	}
	// Without the client certificate the server refuses the handshake.
	tlsCfg.CertFile, tlsCfg.KeyFile = "", ""
	if _, err := nats.Connect(srv.URL(), mustOpts(t, config.NATS{TLS: tlsCfg})...); err == nil {
		t.Fatal("connected without the client certificate the server requires")
	}
}

func mustOpts(t *testing.T, cfg config.NATS) []nats.Option {
	t.Helper()
	o, err := Options(cfg, "drover-proxy r1", slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	return append(o, nats.Timeout(2*time.Second))
}

// writeCert writes name.pem and name.key, signed by parent (self-signed
// CA without one).
func writeCert(t *testing.T, dir, name string, parent *x509.Certificate, parentKey *ecdsa.PrivateKey, cn string) (*x509.Certificate, *ecdsa.PrivateKey) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		Subject:      pkix.Name{CommonName: cn},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		DNSNames:     []string{cn},
		IPAddresses:  []net.IP{net.ParseIP("127.0.0.1")},
	}
	if parent == nil {
		tmpl.IsCA, tmpl.BasicConstraintsValid = true, true
		tmpl.DNSNames, tmpl.IPAddresses = nil, nil
		parent, parentKey = tmpl, key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, &key.PublicKey, parentKey)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, name+".pem"), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, name+".key"), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), 0o600); err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return cert, key
}

func TestRedact(t *testing.T) {
	if got := redact("nats://u:secret@a:4222,nats://b:4222"); strings.Contains(got, "secret") {
		t.Fatalf("redact left the password: %s", got)
	}
}
