//go:build linux

package spool

import (
	"errors"
	"os"
	"syscall"
)

// mapFile maps n bytes of f shared and writable: stores into the mapping
// go straight to the file's pages in the page cache, which outlive the
// process, with no system call per append.
func mapFile(f *os.File, n int64) ([]byte, error) {
	return syscall.Mmap(int(f.Fd()), 0, int(n), syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_SHARED)
}

func unmapFile(m []byte) error { return syscall.Munmap(m) }

// datasync is fdatasync: the data, and the metadata needed to read it.
func datasync(f *os.File) error { return syscall.Fdatasync(int(f.Fd())) }

// allocate reserves the file's blocks from off to off+n and extends it to
// cover them, so that stores into the mapping there never need the file
// system to find space (a full disk fails here, with an error, instead of
// a SIGBUS at a store).
func allocate(f *os.File, off, n int64) error {
	for {
		err := syscall.Fallocate(int(f.Fd()), 0, off, n)
		if !errors.Is(err, syscall.EINTR) {
			return err
		}
	}
}
