// Package chstore is Drover's ClickHouse access: connecting over the native
// protocol, applying the migrations in schemas/clickhouse, inserting usage
// event blocks for the aggregator and the read-only queries behind the
// analytics API and droverctl.
//
// It works against ClickHouse 18.16 and current releases. 18.16 needs every
// INSERT to name its columns and to go through PrepareBatch, and aggregates
// to have names of their own; schemas/clickhouse/README.md and the "Tables"
// section of docs/pipeline.md say which features each server version gets.
package chstore

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"

	"github.com/droverhq/drover/pkg/config"
)

// Options says where ClickHouse is.
type Options struct {
	// Addr is host:port of the native protocol (9000 by default in ClickHouse).
	Addr string
	// Database and Username default to config.DefaultClickHouse's.
	Database string
	Username string
	Password string
	// DialTimeout bounds connecting; ReadTimeout bounds waiting for a
	// query's answer. Both default to config.DefaultClickHouse's.
	DialTimeout time.Duration
	ReadTimeout time.Duration
	// TLS is clickhouse.tls: on when Enabled or a file is set, verifying
	// the server against CAFile (or the system's roots) and presenting
	// CertFile/KeyFile when given.
	TLS config.TLS
}

// Store is a pool of native connections to one ClickHouse server. It is safe
// for concurrent use.
type Store struct {
	conn driver.Conn
	db   string
}

// The pool: enough connections for the aggregator's insert and committed
// reads beside the proxy's and droverctl's queries.
const (
	maxOpenConns = 16
	maxIdleConns = 4
)

var identRe = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

// Open prepares a connection pool. It does not contact the server: a store
// opened while ClickHouse is down works once it is up (see Ping).
func Open(opts Options) (*Store, error) {
	if opts.Addr == "" {
		return nil, errors.New("chstore: no address")
	}
	def := config.DefaultClickHouse()
	if opts.Database == "" {
		opts.Database = def.Database
	}
	if !identRe.MatchString(opts.Database) {
		return nil, fmt.Errorf("chstore: database name %q: want letters, digits and _", opts.Database)
	}
	if opts.Username == "" {
		opts.Username = def.Username
	}
	if opts.DialTimeout == 0 {
		opts.DialTimeout = def.DialTimeout
	}
	if opts.ReadTimeout == 0 {
		opts.ReadTimeout = def.ReadTimeout
	}
	tlsConf, err := tlsConfig(opts.TLS)
	if err != nil {
		return nil, fmt.Errorf("chstore: %w", err)
	}
	conn, err := clickhouse.Open(&clickhouse.Options{
		Protocol: clickhouse.Native,
		TLS:      tlsConf,
		Addr:     []string{opts.Addr},
		// The database may not exist before Migrate: connect to default and
		// qualify every table name instead.
		Auth:         clickhouse.Auth{Database: "default", Username: opts.Username, Password: opts.Password},
		DialTimeout:  opts.DialTimeout,
		ReadTimeout:  opts.ReadTimeout,
		MaxOpenConns: maxOpenConns,
		MaxIdleConns: maxIdleConns,
	})
	if err != nil {
		return nil, fmt.Errorf("chstore: opening %s: %w", opts.Addr, err)
	}
	return &Store{conn: conn, db: opts.Database}, nil
}

// Close releases the connections.
func (s *Store) Close() error { return s.conn.Close() }

// Database is the database the store reads and writes.
func (s *Store) Database() string { return s.db }

// Ping checks that the server answers.
func (s *Store) Ping(ctx context.Context) error {
	if err := s.conn.Ping(ctx); err != nil {
		return fmt.Errorf("pinging clickhouse: %w", err)
	}
	return nil
}

// Version is a server version, e.g. 18.16.1.
type Version struct {
	Major, Minor, Patch int
	Raw                 string
}

// AtLeast reports whether v is major.minor or newer.
func (v Version) AtLeast(major, minor int) bool {
	return v.Major > major || (v.Major == major && v.Minor >= minor)
}

func (v Version) String() string { return v.Raw }

// ServerVersion asks the server for its version.
func (s *Store) ServerVersion(ctx context.Context) (Version, error) {
	var raw string
	if err := s.conn.QueryRow(ctx, "SELECT version()").Scan(&raw); err != nil {
		return Version{}, fmt.Errorf("reading clickhouse version: %w", err)
	}
	return ParseVersion(raw)
}

// ParseVersion parses "major.minor[.patch[...]]".
func ParseVersion(raw string) (Version, error) {
	parts := strings.Split(raw, ".")
	v := Version{Raw: raw}
	nums := []*int{&v.Major, &v.Minor, &v.Patch}
	for i := 0; i < len(nums) && i < len(parts); i++ {
		n, err := strconv.Atoi(parts[i])
		if err != nil {
			return Version{}, fmt.Errorf("parsing clickhouse version %q: %w", raw, err)
		}
		*nums[i] = n
	}
	if len(parts) < 2 {
		return Version{}, fmt.Errorf("parsing clickhouse version %q: want major.minor", raw)
	}
	return v, nil
}

// table qualifies a table name with the store's database.
func (s *Store) table(name string) string { return s.db + "." + name }
