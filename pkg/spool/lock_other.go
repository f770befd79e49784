//go:build !unix

package spool

import (
	"os"
	"path/filepath"
)

// lockDir only creates the lock file where flock is unavailable.
func lockDir(dir string) (*os.File, error) {
	return os.OpenFile(filepath.Join(dir, "LOCK"), os.O_CREATE|os.O_RDWR, 0o644)
}
