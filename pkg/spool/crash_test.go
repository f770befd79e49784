package spool

import (
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
)

// crashChild is set in the environment of the process
// TestKill9KeepsEveryAppend starts: it appends and kills itself.
const crashChild = "SPOOL_TEST_CRASH_DIR"

// crashAppends is how many records the child appends (21 bytes each with
// their frame, 2.1 MB): a sealed segment of crashSegment bytes and a
// partly written one.
const crashAppends = 100_000

const crashSegment = 1536 << 10

// crashAcked is how many of them the child reads and acknowledges.
const crashAcked = 30_000

// runCrashChild appends crashAppends records to the spool in dir, across
// segments, and dies by SIGKILL without closing it, as a replica that is
// kill -9ed or OOM-killed does.
func runCrashChild(dir string) {
	s, err := Open(dir, Options{MaxBytes: 1 << 30, SegmentBytes: crashSegment})
	if err != nil {
		os.Exit(3)
	}
	for i := 0; i < crashAppends; i++ {
		if n, err := s.Append(rec(i)); n != 1 || err != nil {
			os.Exit(4)
		}
	}
	// Read and acknowledge the first crashAcked: the ack, written in
	// place and not yet synced, must survive too.
	recs, next, err := s.Read(s.Acked(), crashAcked)
	if err != nil || len(recs) != crashAcked || s.Ack(next) != nil {
		os.Exit(5)
	}
	syscall.Kill(os.Getpid(), syscall.SIGKILL) //nolint:errcheck // dying either way
	select {}
}

// TestKill9KeepsEveryAppend checks the spool's claim for a process crash
// with the real thing: a child process appends and is SIGKILLed; every
// record it appended and did not acknowledge is read back, in order, and
// appending goes on. On
// Linux the appends went into a mapped segment whose reserved tail the
// crash left behind.
func TestKill9KeepsEveryAppend(t *testing.T) {
	dir := t.TempDir()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), crashChild+"="+dir)
	err := cmd.Run()
	ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus)
	if !ok || !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
		t.Fatalf("child did not die by SIGKILL: %v", err)
	}
	segs, _ := listSegments(dir)
	last, _ := os.Stat(filepath.Join(dir, segName(segs[len(segs)-1])))
	t.Logf("%d segments; the last one %d bytes on disk", len(segs), last.Size())

	s := open(t, dir, Options{SegmentBytes: crashSegment})
	defer s.Close()
	if st := s.Stats(); st.Pending != crashAppends-crashAcked {
		t.Fatalf("pending after the crash = %d, want %d", st.Pending, crashAppends-crashAcked)
	}
	s.Append(rec(crashAppends))
	wantSeq(t, readAll(t, s, 500), crashAcked, crashAppends+1)
}

// TestWriteModeAppends runs the basic cycle with write(2) appends, the
// path taken where segments cannot be mapped.
func TestWriteModeAppends(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir, Options{SegmentBytes: 1000, noMap: true})
	for i := 0; i < 300; i++ {
		s.Append(rec(i))
	}
	s.Close()
	s = open(t, dir, Options{SegmentBytes: 1000})
	defer s.Close()
	for i := 300; i < 400; i++ {
		s.Append(rec(i))
	}
	wantSeq(t, readAll(t, s, 64), 0, 400)
}

// TestEmptyRecordIsRefused: a zero length marks the end of a segment's
// data on disk, so an empty record cannot be stored.
func TestEmptyRecordIsRefused(t *testing.T) {
	s := open(t, t.TempDir(), Options{})
	defer s.Close()
	n, err := s.Append(rec(0), nil, rec(1))
	if n != 1 || err == nil {
		t.Fatalf("Append with an empty record: %d accepted, err %v", n, err)
	}
	if got := s.Stats().Dropped; got != 2 {
		t.Fatalf("dropped = %d, want 2", got)
	}
}
