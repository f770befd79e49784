// Package natsconn dials NATS the way every Drover service does: with the
// credentials and TLS of the config's nats section, an inbox of the
// service's own (so that the server can allow each service user its reply
// subjects and nobody else's), reconnecting for ever, and logging every
// refusal by the server loudly instead of dropping it.
//
// nats.url may list a cluster's servers, comma-separated; the client also
// learns the cluster's other servers from the one it reaches. When its
// server goes away it reconnects to any other at once (the list is
// shuffled, so a fleet spreads over the cluster) and comes back to a
// server it has already tried after reconnectWait; every loss and
// reconnection is logged with the server and how long the connection was
// down. A server that dies with its host (no TCP reset) is noticed within
// pingInterval × (maxPingsOut+1). docs/pipeline.md ("A NATS cluster")
// states what clients see meanwhile.
//
// Name a connection "<service> <instance> [<purpose>]", e.g.
// "drover-proxy r1 usage": the server shows the name in its monitoring,
// and the first word picks the inbox prefix, _INBOX_drover_proxy here
// (InboxPrefix), which deploy/nats/nats.conf lets only that service's user
// subscribe to.
package natsconn

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/droverhq/drover/pkg/config"
)

const (
	// reconnectWait spaces attempts to the same server while NATS is away;
	// the other servers of a cluster are tried at once.
	reconnectWait = 500 * time.Millisecond
	// reconnectJitter spreads a fleet's attempts after a server is lost.
	reconnectJitter = 100 * time.Millisecond
	// pingInterval and maxPingsOut bound how long a server that vanished
	// without closing the connection (its host died) goes unnoticed: the
	// client gives up on it after maxPingsOut unanswered pings, about
	// pingInterval × (maxPingsOut+1). nats.go's defaults (2m, 2) leave
	// that at minutes.
	pingInterval = 5 * time.Second
	maxPingsOut  = 2
	// firstDialTimeout bounds the first, synchronous attempt, which tells a
	// server that refuses our credentials from one that is not up yet.
	firstDialTimeout = 2 * time.Second
	// logEvery spaces repeated refusals in the log; the first of a kind is
	// always logged.
	logEvery = 10 * time.Second
)

// InboxPrefix is the reply-subject prefix of a service's connections:
// "_INBOX_" plus the service name with dashes as underscores
// ("drover-proxy" -> "_INBOX_drover_proxy").
func InboxPrefix(service string) string {
	return "_INBOX_" + strings.NewReplacer("-", "_", ".", "_", "*", "_", ">", "_", " ", "_").Replace(service)
}

// Connect dials cfg.URL as name. It does not fail when NATS is down: the
// connection keeps retrying in the background (callers spool or route
// alone until it connects). It does fail at once when the server is up and
// refuses the credentials, or when the credentials or TLS files cannot be
// read: both are configuration errors, named by their config key. extra
// options come last and may override these.
func Connect(cfg config.NATS, name string, log *slog.Logger, extra ...nats.Option) (*nats.Conn, error) {
	if log == nil {
		log = slog.Default()
	}
	opts, err := Options(cfg, name, log)
	if err != nil {
		return nil, err
	}
	opts = append(opts, extra...)
	// A first attempt without retrying tells "refused" from "not there".
	nc, first := nats.Connect(cfg.URL, append(opts, nats.Timeout(firstDialTimeout))...)
	switch {
	case first == nil:
		return nc, nil
	case refused(first):
		return nil, fmt.Errorf("nats %s: the server refused the credentials (check nats.user and nats.password, nats.nkey_seed_file or nats.creds_file): %w", name, first)
	}
	nc, err = nats.Connect(cfg.URL, append(opts, nats.RetryOnFailedConnect(true))...)
	if err != nil {
		return nil, fmt.Errorf("nats %s: %w", name, err)
	}
	if !nc.IsConnected() {
		// The first attempt's error tells a server that is down from a TLS
		// handshake that fails.
		log.Warn("NATS not reachable yet; retrying in the background", "conn", name, "url", redact(cfg.URL), "err", first.Error())
	}
	return nc, nil
}

// Options are Connect's options without the URL: name, inbox, credentials,
// TLS, reconnecting and the handlers that log refusals.
func Options(cfg config.NATS, name string, log *slog.Logger) ([]nats.Option, error) {
	service, _, _ := strings.Cut(name, " ")
	l := &refusals{log: log.With("component", "nats", "conn", name), last: map[string]time.Time{}}
	opts := []nats.Option{
		nats.Name(name),
		nats.CustomInboxPrefix(InboxPrefix(service)),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(reconnectWait),
		nats.ReconnectJitter(reconnectJitter, reconnectJitter),
		nats.PingInterval(pingInterval),
		nats.MaxPingsOutstanding(maxPingsOut),
		nats.ErrorHandler(l.onError),
		nats.ClosedHandler(l.onClosed),
		nats.ConnectHandler(l.onConnect),
		nats.DisconnectErrHandler(l.onDisconnect),
		nats.ReconnectHandler(l.onReconnect),
	}
	switch {
	case cfg.User != "":
		opts = append(opts, nats.UserInfo(cfg.User, cfg.Password.Reveal()))
	case cfg.NKeySeedFile != "":
		o, err := nats.NkeyOptionFromSeed(cfg.NKeySeedFile)
		if err != nil {
			return nil, fmt.Errorf("nats.nkey_seed_file: %w", err)
		}
		opts = append(opts, o)
	case cfg.CredsFile != "":
		if _, err := os.Stat(cfg.CredsFile); err != nil {
			return nil, fmt.Errorf("nats.creds_file: %w", err)
		}
		opts = append(opts, nats.UserCredentials(cfg.CredsFile))
	}
	if cfg.TLS.On() {
		tc, err := tlsConfig(cfg.TLS)
		if err != nil {
			return nil, err
		}
		opts = append(opts, nats.Secure(tc))
	}
	return opts, nil
}

// tlsConfig builds the client side of TLS; a tls:// URL alone needs none
// (the system's roots verify the server).
func tlsConfig(t config.TLS) (*tls.Config, error) {
	tc := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: t.ServerName}
	if t.CAFile != "" {
		pem, err := os.ReadFile(t.CAFile)
		if err != nil {
			return nil, fmt.Errorf("nats.tls.ca_file: %w", err)
		}
		tc.RootCAs = x509.NewCertPool()
		if !tc.RootCAs.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("nats.tls.ca_file: no PEM certificate in %s", t.CAFile)
		}
	}
	if t.CertFile != "" {
		cert, err := tls.LoadX509KeyPair(t.CertFile, t.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("nats.tls.cert_file and key_file: %w", err)
		}
		tc.Certificates = []tls.Certificate{cert}
	}
	return tc, nil
}

// refused reports whether the server turned the credentials down (as
// opposed to not answering).
func refused(err error) bool {
	return errors.Is(err, nats.ErrAuthorization) || errors.Is(err, nats.ErrAuthExpired) ||
		errors.Is(err, nats.ErrAuthRevoked) || errors.Is(err, nats.ErrAccountAuthExpired) ||
		strings.Contains(strings.ToLower(err.Error()), "authorization violation")
}

// refusals logs what the server refuses: the first of each kind at once,
// repeats at most every logEvery with how many were left out; and every
// loss of the connection and reconnection. Messages hold subjects, server
// addresses and the server's words, never credentials.
type refusals struct {
	log *slog.Logger

	mu         sync.Mutex // guards last, suppressed, lostAt and server
	last       map[string]time.Time
	suppressed map[string]int
	lostAt     time.Time // when the connection was lost; zero while up
	server     string    // the server last connected to, redacted
}

func (r *refusals) onError(nc *nats.Conn, sub *nats.Subscription, err error) {
	kind, msg := "error", "NATS reported an error"
	switch {
	case errors.Is(err, nats.ErrPermissionViolation):
		kind, msg = "permission", "NATS refused a publish or subscribe: this user lacks the permission (see deploy/nats/nats.conf and docs/security.md)"
	case refused(err):
		kind, msg = "auth", "NATS refused the credentials (check nats.user and nats.password, nats.nkey_seed_file or nats.creds_file)"
	case errors.Is(err, nats.ErrSlowConsumer):
		kind, msg = "slow", "NATS dropped messages for a slow subscriber"
	}
	now := time.Now()
	r.mu.Lock()
	if t, ok := r.last[kind]; ok && now.Sub(t) < logEvery {
		if r.suppressed == nil {
			r.suppressed = map[string]int{}
		}
		r.suppressed[kind]++
		r.mu.Unlock()
		return
	}
	r.last[kind] = now
	skipped := r.suppressed[kind]
	delete(r.suppressed, kind)
	r.mu.Unlock()
	attrs := []any{"err", err.Error()}
	if sub != nil {
		attrs = append(attrs, "subscription", sub.Subject)
	}
	if skipped > 0 {
		attrs = append(attrs, "similar_errors_not_logged", skipped)
	}
	r.log.Error(msg, attrs...)
}

// onConnect notes the first server reached, for onDisconnect (which can no
// longer ask the connection).
func (r *refusals) onConnect(nc *nats.Conn) {
	server := redact(nc.ConnectedUrl())
	r.mu.Lock()
	r.server = server
	r.mu.Unlock()
}

// onDisconnect logs a lost connection (not a deliberate close) and notes
// when, for onReconnect.
func (r *refusals) onDisconnect(nc *nats.Conn, err error) {
	if nc.IsClosed() {
		return
	}
	r.mu.Lock()
	r.lostAt = time.Now()
	server := r.server
	r.mu.Unlock()
	attrs := []any{"server", server, "known_servers", len(nc.Servers())}
	if err != nil {
		attrs = append(attrs, "err", err.Error())
	}
	r.log.Warn("NATS connection lost; reconnecting to any server of the cluster", attrs...)
}

// onReconnect logs where the connection came back and after how long.
func (r *refusals) onReconnect(nc *nats.Conn) {
	server := redact(nc.ConnectedUrl())
	r.mu.Lock()
	lost := r.lostAt
	r.lostAt, r.server = time.Time{}, server
	r.mu.Unlock()
	attrs := []any{"server", server}
	if !lost.IsZero() {
		attrs = append(attrs, "down_for", time.Since(lost).Round(time.Millisecond).String())
	}
	r.log.Info("NATS reconnected", attrs...)
}

func (r *refusals) onClosed(nc *nats.Conn) {
	if err := nc.LastError(); err != nil {
		r.log.Error("NATS connection closed for good; restart the service once the cause is fixed", "err", err.Error())
	}
}

// redact drops credentials embedded in a URL (nats://user:pass@host).
func redact(url string) string {
	scheme, rest, ok := strings.Cut(url, "://")
	if !ok {
		return url
	}
	var hosts []string
	for _, h := range strings.Split(rest, ",") {
		if at := strings.LastIndex(h, "@"); at >= 0 {
			h = "[redacted]@" + h[at+1:]
		}
		hosts = append(hosts, h)
	}
	return scheme + "://" + strings.Join(hosts, ",")
}
