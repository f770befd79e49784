package chstore_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/droverhq/drover/pkg/chstore"
	"github.com/droverhq/drover/pkg/config"
)

func TestTLSConfigErrorsNameTheKey(t *testing.T) {
	dir := t.TempDir()
	notPEM := filepath.Join(dir, "ca.txt")
	if err := os.WriteFile(notPEM, []byte("not a certificate"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		tls  config.TLS
		want string
	}{
		{"missing CA file", config.TLS{CAFile: filepath.Join(dir, "missing.pem")}, "clickhouse.tls.ca_file"},
		{"CA file without a certificate", config.TLS{CAFile: notPEM}, "clickhouse.tls.ca_file"},
		{"missing client certificate", config.TLS{Enabled: true, CertFile: filepath.Join(dir, "c.pem"), KeyFile: filepath.Join(dir, "k.pem")}, "clickhouse.tls.cert_file"},
		{"certificate without key", config.TLS{Enabled: true, CertFile: notPEM}, "cert_file and key_file"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// Through FromConfig, as the proxy, the aggregator and droverctl
			// open ClickHouse.
			_, err := chstore.Open(chstore.FromConfig(config.ClickHouse{Addr: "127.0.0.1:9440", TLS: tc.tls}))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Open: %v, want an error naming %s", err, tc.want)
			}
		})
	}
}

// TestTLSHandshake checks that clickhouse.tls reaches the wire: against a
// TLS listener with a certificate for clickhouse.internal signed by a test
// CA, the client verifies the server with ca_file and server_name and
// presents its client certificate; with another server_name it refuses the
// server. The listener speaks no ClickHouse, so Ping fails after the
// handshake either way; what is checked is the handshake.
func TestTLSHandshake(t *testing.T) {
	dir := t.TempDir()
	ca, caKey := newCA(t)
	writePEM(t, filepath.Join(dir, "ca.pem"), "CERTIFICATE", ca.Raw)
	serverCert := leaf(t, ca, caKey, "clickhouse.internal", x509.ExtKeyUsageServerAuth)
	clientCert := leaf(t, ca, caKey, "drover-aggregator", x509.ExtKeyUsageClientAuth)
	writePEM(t, filepath.Join(dir, "client.pem"), "CERTIFICATE", clientCert.Certificate[0])
	keyDER, err := x509.MarshalECPrivateKey(clientCert.PrivateKey.(*ecdsa.PrivateKey))
	if err != nil {
		t.Fatal(err)
	}
	writePEM(t, filepath.Join(dir, "client.key"), "EC PRIVATE KEY", keyDER)

	pool := x509.NewCertPool()
	pool.AddCert(ca)
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{
		Certificates: []tls.Certificate{serverCert},
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ClientCAs:    pool,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	type handshake struct {
		sni, client string
		err         error
	}
	handshakes := make(chan handshake, 8)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			tc := c.(*tls.Conn)
			tc.SetDeadline(time.Now().Add(5 * time.Second))
			err = tc.Handshake()
			h := handshake{sni: tc.ConnectionState().ServerName, err: err}
			if certs := tc.ConnectionState().PeerCertificates; len(certs) > 0 {
				h.client = certs[0].Subject.CommonName
			}
			select {
			case handshakes <- h:
			default: // a retry beyond what the test reads
			}
			tc.Close()
		}
	}()

	ping := func(serverName string) error {
		s, err := chstore.Open(chstore.Options{Addr: ln.Addr().String(), DialTimeout: 2 * time.Second, ReadTimeout: 2 * time.Second,
			TLS: config.TLS{CAFile: filepath.Join(dir, "ca.pem"), ServerName: serverName,
				CertFile: filepath.Join(dir, "client.pem"), KeyFile: filepath.Join(dir, "client.key")}})
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		return s.Ping(ctx)
	}

	err = ping("clickhouse.internal")
	h := <-handshakes
	if h.err != nil || h.sni != "clickhouse.internal" || h.client != "drover-aggregator" {
		t.Fatalf("handshake %+v: want it complete, SNI clickhouse.internal, client certificate drover-aggregator", h)
	}
	if err == nil || strings.Contains(err.Error(), "certificate") {
		t.Fatalf("Ping after a good handshake: %v, want a protocol error (the listener speaks no ClickHouse)", err)
	}

	err = ping("someone-else.internal")
	if err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Fatalf("Ping with server_name someone-else.internal: %v, want the server's certificate refused", err)
	}
}

func newCA(t *testing.T) (*x509.Certificate, *ecdsa.PrivateKey) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "drover test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	ca, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return ca, key
}

func leaf(t *testing.T, ca *x509.Certificate, caKey *ecdsa.PrivateKey, name string, usage x509.ExtKeyUsage) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: name},
		DNSNames: []string{name}, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{usage},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

func writePEM(t *testing.T, path, typ string, der []byte) {
	t.Helper()
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
}
