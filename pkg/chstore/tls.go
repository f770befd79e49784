package chstore

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"

	"github.com/droverhq/drover/pkg/config"
)

// FromConfig is the Options for config.ClickHouse, so that every service
// opens ClickHouse with the same credentials, timeouts and TLS.
func FromConfig(ch config.ClickHouse) Options {
	return Options{
		Addr: ch.Addr, Database: ch.Database,
		Username: ch.Username, Password: ch.Password.Reveal(),
		DialTimeout: ch.DialTimeout, ReadTimeout: ch.ReadTimeout,
		TLS: ch.TLS,
	}
}

// tlsConfig builds the client side of clickhouse.tls, or nil when TLS is
// off. Files are read here, at Open, so that a missing or unreadable one is
// an error naming its key rather than a failed handshake later.
func tlsConfig(t config.TLS) (*tls.Config, error) {
	if !t.On() {
		return nil, nil
	}
	c := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: t.ServerName}
	if t.CAFile != "" {
		pem, err := os.ReadFile(t.CAFile)
		if err != nil {
			return nil, fmt.Errorf("clickhouse.tls.ca_file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("clickhouse.tls.ca_file: %s holds no PEM certificate", t.CAFile)
		}
		c.RootCAs = pool
	}
	if (t.CertFile == "") != (t.KeyFile == "") {
		return nil, errors.New("clickhouse.tls: cert_file and key_file go together")
	}
	if t.CertFile != "" {
		cert, err := tls.LoadX509KeyPair(t.CertFile, t.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("clickhouse.tls.cert_file/key_file: %w", err)
		}
		c.Certificates = []tls.Certificate{cert}
	}
	return c, nil
}
