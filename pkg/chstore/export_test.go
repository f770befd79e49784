package chstore

import "context"

// ExecForTest runs one migration statement as Migrate does, for tests that
// re-run migrations by hand.
func ExecForTest(ctx context.Context, s *Store, stmt string) error { return s.execMigration(ctx, stmt) }
