package chstore

import "context"

// ExecForTest runs one statement, for tests that re-run migrations by hand.
func ExecForTest(ctx context.Context, s *Store, stmt string) error { return s.conn.Exec(ctx, stmt) }
