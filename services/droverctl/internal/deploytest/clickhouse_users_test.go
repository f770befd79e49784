package deploytest

import (
	"context"
	"encoding/xml"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"

	"github.com/droverhq/drover/pkg/chstore"
	"github.com/droverhq/drover/pkg/usage"
	"github.com/droverhq/drover/testkit/chtest"
)

// usersFile is the ClickHouse users config every shipped deployment mounts.
const usersFile = "deploy/clickhouse/users.d/drover.xml"

// TestShippedClickHouseUsers starts Debian's clickhouse-server with the
// shipped users file merged in (as the official image and run.sh merge it)
// and the passwords in the server's environment, then checks what each
// user may do: the writer migrates and inserts, the reader reads and is
// refused every write, and a wrong or empty password is refused.
func TestShippedClickHouseUsers(t *testing.T) {
	root := repoRoot(t)
	const readerPass, writerPass = "reader-test-password", "writer-test-password"
	// from_env is read by the server process, which inherits this one's
	// environment.
	t.Setenv("CLICKHOUSE_READER_PASSWORD", readerPass)
	t.Setenv("CLICKHOUSE_WRITER_PASSWORD", writerPass)
	srv := chtest.Start(t)
	if err := os.MkdirAll(filepath.Join(srv.Dir(), "users.d"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(srv.Dir(), "users.d", "drover.xml"), []byte(readFile(t, filepath.Join(root, usersFile))), 0o644); err != nil {
		t.Fatal(err)
	}
	srv.Restart()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	open := func(user, pass string) *chstore.Store {
		s, err := chstore.Open(chstore.Options{Addr: srv.Addr(), Database: "drover", Username: user, Password: pass})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	}

	// The aggregator's user: every migration from an empty server, then an
	// insert.
	writer := open("drover_writer", writerPass)
	applied, err := writer.Migrate(ctx)
	if err != nil {
		t.Fatalf("drover_writer: migrate: %v\n%s", err, srv.LogTail())
	}
	all, _ := chstore.Migrations()
	if len(applied) != len(all) {
		t.Fatalf("drover_writer applied %v, want all %d migrations", applied, len(all))
	}
	now := time.Now().UTC()
	if err := writer.InsertEvents(ctx, []chstore.EventRow{{Seq: 1, Event: usage.Event{Schema: usage.SchemaVersion, ID: usage.NewID(),
		Time: now, Endpoint: "gpu-a", Model: "tiny", APIKey: "team-a", Status: 200,
		InputTokens: usage.Int64(10), OutputTokens: usage.Int64(5)}}}); err != nil {
		t.Fatalf("drover_writer: insert: %v", err)
	}

	// The proxies' user reads what the writer wrote, through the same
	// queries the analytics API runs.
	reader := open("drover_reader", readerPass)
	rows, err := reader.Usage(ctx, chstore.UsageQuery{Since: now.Add(-time.Hour), Until: now.Add(time.Hour)})
	if err != nil {
		t.Fatalf("drover_reader: usage query: %v", err)
	}
	if len(rows) != 1 || rows[0].TotalTokens != 15 {
		t.Fatalf("drover_reader read %+v, want one row of 15 tokens", rows)
	}

	conn, err := clickhouse.Open(&clickhouse.Options{Addr: []string{srv.Addr()},
		Auth: clickhouse.Auth{Database: "drover", Username: "drover_reader", Password: readerPass}})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	for _, stmt := range []string{
		"INSERT INTO drover.usage_progress (partition, seq) VALUES (99, 1)",
		"CREATE TABLE drover.intruder (x UInt8) ENGINE = Memory",
		"DROP TABLE drover.usage_events",
		"ALTER TABLE drover.usage_events DELETE WHERE 1",
		"CREATE DATABASE intruder",
		"DROP DATABASE drover",
		"TRUNCATE TABLE drover.token_usage_minute",
	} {
		err := conn.Exec(ctx, stmt)
		if err == nil {
			t.Errorf("drover_reader: %s was allowed", stmt)
		} else if !strings.Contains(strings.ToLower(err.Error()), "readonly") {
			t.Errorf("drover_reader: %s: %v, want refused as read-only", stmt, err)
		}
	}
	// readonly=2 lets a client set per-query limits, never read-only itself.
	lifted := clickhouse.Context(ctx, clickhouse.WithSettings(clickhouse.Settings{"readonly": 0}))
	if err := conn.Exec(lifted, "CREATE TABLE drover.intruder (x UInt8) ENGINE = Memory"); err == nil {
		t.Error("drover_reader: CREATE TABLE with readonly=0 in the query's settings was allowed")
	}

	// The refusals changed nothing.
	if n, ids, err := writer.EventCounts(ctx); err != nil || n != 1 || ids != 1 {
		t.Errorf("after the reader's attempts: %d events, %d ids (%v), want 1 and 1", n, ids, err)
	}

	for _, c := range []struct{ user, pass string }{
		{"drover_reader", "wrong"}, {"drover_reader", ""}, {"drover_writer", readerPass}, {"drover_writer", ""},
	} {
		s := open(c.user, c.pass)
		if err := s.Ping(ctx); err == nil {
			t.Errorf("%s with password %q: connected", c.user, c.pass)
		}
	}
}

// TestShippedClickHouseUsersFile reads the users file for what a running
// server cannot show here (it listens on loopback only): the default user
// is confined to loopback, and no password is written in the file.
func TestShippedClickHouseUsersFile(t *testing.T) {
	root := repoRoot(t)
	var f struct {
		Users struct {
			Users []struct {
				XMLName  xml.Name
				Password *struct {
					FromEnv string `xml:"from_env,attr"`
					Value   string `xml:",chardata"`
				} `xml:"password"`
				Networks *struct {
					Replace string   `xml:"replace,attr"`
					IPs     []string `xml:"ip"`
				} `xml:"networks"`
				Profile string `xml:"profile"`
			} `xml:",any"`
		} `xml:"users"`
	}
	if err := xml.Unmarshal([]byte(readFile(t, filepath.Join(root, usersFile))), &f); err != nil {
		t.Fatalf("%s: %v", usersFile, err)
	}
	want := map[string]string{"drover_reader": "CLICKHOUSE_READER_PASSWORD", "drover_writer": "CLICKHOUSE_WRITER_PASSWORD"}
	seen := map[string]bool{}
	for _, u := range f.Users.Users {
		name := u.XMLName.Local
		seen[name] = true
		switch name {
		case "default":
			if u.Networks == nil || u.Networks.Replace != "replace" || !slices.Equal(u.Networks.IPs, []string{"127.0.0.1", "::1"}) {
				t.Errorf("default user: networks %+v, want replace=\"replace\" with 127.0.0.1 and ::1 only", u.Networks)
			}
			if u.Password != nil {
				t.Errorf("default user: the file sets a password; the image's own user setup owns it")
			}
		default:
			env, ok := want[name]
			if !ok {
				t.Errorf("unexpected user %s", name)
				continue
			}
			if u.Password == nil || u.Password.FromEnv != env || strings.TrimSpace(u.Password.Value) != "" {
				t.Errorf("%s: password must come from_env=%q and nothing else", name, env)
			}
			if u.Profile != name {
				t.Errorf("%s: profile %q, want its own %q", name, u.Profile, name)
			}
		}
	}
	for _, name := range []string{"default", "drover_reader", "drover_writer"} {
		if !seen[name] {
			t.Errorf("no %s user", name)
		}
	}
}
