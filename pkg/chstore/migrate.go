package chstore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"path"
	"sort"
	"strconv"
	"strings"
	"text/template"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"

	"github.com/droverhq/drover/schemas"
)

// Migration is one file of schemas/clickhouse.
type Migration struct {
	Version uint32 // the file name's number prefix
	Name    string // the file name
	Text    string // the template, before rendering
}

// Migrations lists schemas/clickhouse/*.sql in version order.
func Migrations() ([]Migration, error) {
	names, err := fs.Glob(schemas.FS, "clickhouse/*.sql")
	if err != nil {
		return nil, err
	}
	var out []Migration
	seen := map[uint32]string{}
	for _, name := range names {
		base := path.Base(name)
		num, _, ok := strings.Cut(base, "_")
		v, err := strconv.ParseUint(num, 10, 32)
		if !ok || err != nil {
			return nil, fmt.Errorf("migration %s: name must start with a number and _", base)
		}
		if prev, dup := seen[uint32(v)]; dup {
			return nil, fmt.Errorf("migrations %s and %s share version %d", prev, base, v)
		}
		seen[uint32(v)] = base
		raw, err := fs.ReadFile(schemas.FS, name)
		if err != nil {
			return nil, err
		}
		out = append(out, Migration{Version: uint32(v), Name: base, Text: string(raw)})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Version < out[j].Version })
	return out, nil
}

// templateData is what migration templates see; schemas/clickhouse/README.md
// documents it.
type templateData struct {
	Database string
	Modern   bool
	Version  string
}

// Render turns a migration into the statements to run on a server of
// version v.
func (m Migration) Render(database string, v Version) ([]string, error) {
	modern := v.AtLeast(20, 3)
	tmpl, err := template.New(m.Name).Option("missingkey=error").Funcs(template.FuncMap{
		"lc": func(t string) string {
			if modern {
				return "LowCardinality(" + t + ")"
			}
			return t
		},
	}).Parse(m.Text)
	if err != nil {
		return nil, fmt.Errorf("migration %s: %w", m.Name, err)
	}
	var b bytes.Buffer
	if err := tmpl.Execute(&b, templateData{Database: database, Modern: modern, Version: v.Raw}); err != nil {
		return nil, fmt.Errorf("migration %s: %w", m.Name, err)
	}
	return splitStatements(b.String()), nil
}

// splitStatements splits at a ';' that ends a line and drops comment lines.
func splitStatements(sql string) []string {
	var out []string
	var cur strings.Builder
	for _, line := range strings.Split(sql, "\n") {
		trimmed := strings.TrimSpace(line)
		if strings.HasPrefix(trimmed, "--") {
			continue
		}
		cur.WriteString(line)
		cur.WriteByte('\n')
		if strings.HasSuffix(trimmed, ";") {
			if stmt := strings.TrimSuffix(strings.TrimSpace(cur.String()), ";"); strings.TrimSpace(stmt) != "" {
				out = append(out, stmt)
			}
			cur.Reset()
		}
	}
	if stmt := strings.TrimSpace(cur.String()); stmt != "" {
		out = append(out, stmt)
	}
	return out
}

// Migrate applies every migration not yet recorded in schema_migrations and
// returns the names of those it applied. Statements are idempotent, so two
// processes migrating at once, or a migration interrupted half-way, are
// harmless: the next run completes it.
func (s *Store) Migrate(ctx context.Context) ([]string, error) {
	v, err := s.ServerVersion(ctx)
	if err != nil {
		return nil, err
	}
	migrations, err := Migrations()
	if err != nil {
		return nil, err
	}
	applied, err := s.appliedMigrations(ctx)
	if err != nil {
		return nil, err
	}
	var done []string
	for _, m := range migrations {
		if applied[m.Version] {
			continue
		}
		stmts, err := m.Render(s.db, v)
		if err != nil {
			return done, err
		}
		for i, stmt := range stmts {
			if err := s.execMigration(ctx, stmt); err != nil {
				return done, fmt.Errorf("migration %s, statement %d: %w", m.Name, i+1, err)
			}
		}
		if err := s.recordMigration(ctx, m); err != nil {
			return done, err
		}
		done = append(done, m.Name)
	}
	return done, nil
}

// appliedMigrations returns the versions recorded as applied.
func (s *Store) appliedMigrations(ctx context.Context) (map[uint32]bool, error) {
	var n uint64
	err := s.conn.QueryRow(ctx,
		"SELECT count() AS n FROM system.tables WHERE database = ? AND name = 'schema_migrations'", s.db).Scan(&n)
	if err != nil {
		return nil, fmt.Errorf("looking for schema_migrations: %w", err)
	}
	applied := map[uint32]bool{}
	if n == 0 {
		return applied, nil
	}
	rows, err := s.conn.Query(ctx, "SELECT DISTINCT version FROM "+s.table("schema_migrations"))
	if err != nil {
		return nil, fmt.Errorf("reading schema_migrations: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var v uint32
		if err := rows.Scan(&v); err != nil {
			return nil, fmt.Errorf("reading schema_migrations: %w", err)
		}
		applied[v] = true
	}
	return applied, rows.Err()
}

func (s *Store) recordMigration(ctx context.Context, m Migration) error {
	batch, err := s.conn.PrepareBatch(ctx, "INSERT INTO "+s.table("schema_migrations")+" (version, name, applied_at)")
	if err != nil {
		return fmt.Errorf("recording migration %s: %w", m.Name, err)
	}
	if err := batch.Append(m.Version, m.Name, time.Now().UTC()); err != nil {
		_ = batch.Abort()
		return fmt.Errorf("recording migration %s: %w", m.Name, err)
	}
	if err := batch.Send(); err != nil {
		return fmt.Errorf("recording migration %s: %w", m.Name, err)
	}
	return nil
}

// ClickHouse's errors for adding a column that exists: DUPLICATE_COLUMN,
// and ILLEGAL_COLUMN ("column with this name already exists") on 18.16.
const (
	codeDuplicateColumn = 15
	codeIllegalColumn   = 44
)

// execMigration runs one migration statement. 18.16 has no
// "ADD COLUMN IF NOT EXISTS" (templates write it only for a modern server),
// so there an ADD COLUMN of a column that already exists, as on a re-run,
// counts as done: every statement stays idempotent on both.
func (s *Store) execMigration(ctx context.Context, stmt string) error {
	err := s.conn.Exec(ctx, stmt)
	var ex *clickhouse.Exception
	if err != nil && errors.As(err, &ex) && strings.Contains(strings.ToUpper(stmt), "ADD COLUMN") &&
		(ex.Code == codeDuplicateColumn || ex.Code == codeIllegalColumn && strings.Contains(ex.Message, "already exists")) {
		return nil
	}
	return err
}
