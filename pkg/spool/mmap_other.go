//go:build !linux

package spool

import (
	"errors"
	"os"
)

var errNoMap = errors.New("spool: memory-mapped segments are implemented on Linux only")

// Elsewhere segments are appended with write(2).
func mapFile(*os.File, int64) ([]byte, error) { return nil, errNoMap }
func unmapFile([]byte) error                  { return nil }
func allocate(*os.File, int64, int64) error   { return errNoMap }

func datasync(f *os.File) error { return f.Sync() }
