package spool

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	if dir := os.Getenv(crashChild); dir != "" {
		runCrashChild(dir)
	}
	goleak.VerifyTestMain(m)
}

func open(t *testing.T, dir string, opts Options) *Spool {
	t.Helper()
	if opts.MaxBytes == 0 {
		opts.MaxBytes = 1 << 30
	}
	s, err := Open(dir, opts)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func rec(i int) []byte { return []byte(fmt.Sprintf("record-%06d", i)) }

// readAll reads from the ack position to the end and acknowledges it. A
// spool that never reports its end fails the test instead of hanging it.
func readAll(t *testing.T, s *Spool, batch int) []string {
	t.Helper()
	var got []string
	pos := s.Acked()
	deadline := time.Now().Add(10 * time.Second)
	for {
		if time.Now().After(deadline) || len(got) > 1<<20 {
			t.Fatalf("spool still returning records after %d", len(got))
		}
		recs, next, err := s.Read(pos, batch)
		if err != nil {
			t.Fatal(err)
		}
		if len(recs) == 0 {
			break
		}
		for _, r := range recs {
			got = append(got, string(r))
		}
		if err := s.Ack(next); err != nil {
			t.Fatal(err)
		}
		pos = next
	}
	return got
}

func wantSeq(t *testing.T, got []string, from, to int) {
	t.Helper()
	if len(got) != to-from {
		t.Fatalf("got %d records, want %d", len(got), to-from)
	}
	for i, g := range got {
		if g != string(rec(from+i)) {
			t.Fatalf("record %d = %q, want %q", i, g, rec(from+i))
		}
	}
}

func TestAppendReadAckAcrossSegmentsAndRestart(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir, Options{SegmentBytes: 1000})
	for i := 0; i < 500; i++ {
		if _, err := s.Append(rec(i)); err != nil {
			t.Fatal(err)
		}
	}
	if st := s.Stats(); st.Pending != 500 || st.Segments < 5 {
		t.Fatalf("stats %+v: want 500 pending over several segments", st)
	}
	// Read and acknowledge the first 200, then "crash" (close) and reopen.
	recs, next, err := s.Read(s.Acked(), 200)
	if err != nil || len(recs) != 200 {
		t.Fatalf("read %d, %v", len(recs), err)
	}
	if err := s.Ack(next); err != nil {
		t.Fatal(err)
	}
	// Read 100 more without acknowledging them.
	if recs, _, _ := s.Read(next, 100); len(recs) != 100 {
		t.Fatalf("read %d", len(recs))
	}
	s.Close()

	s = open(t, dir, Options{SegmentBytes: 1000})
	if st := s.Stats(); st.Pending != 300 {
		t.Fatalf("pending after reopen = %d, want 300", st.Pending)
	}
	for i := 500; i < 600; i++ {
		s.Append(rec(i))
	}
	wantSeq(t, readAll(t, s, 64), 200, 600)
	st := s.Stats()
	if st.Pending != 0 || st.Bytes != 0 || st.Segments != 1 {
		t.Fatalf("drained spool stats %+v: want empty", st)
	}
	s.Close()
	if segs, _ := listSegments(dir); len(segs) != 1 {
		t.Fatalf("segments left on disk: %v", segs)
	}
}

func TestTornTailIsSkipped(t *testing.T) {
	for _, tc := range []struct {
		name string
		tail func(last []byte) []byte
	}{
		{"partial header", func([]byte) []byte { return []byte{0, 0} }},
		{"partial payload", func(last []byte) []byte { return last[:len(last)-3] }},
		{"bad checksum", func(last []byte) []byte {
			b := append([]byte(nil), last...)
			b[len(b)-1] ^= 0xff
			return b
		}},
		{"absurd length", func([]byte) []byte { return []byte{0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0, 'x'} }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			s := open(t, dir, Options{})
			for i := 0; i < 10; i++ {
				s.Append(rec(i))
			}
			s.Close()
			segs, _ := listSegments(dir)
			path := filepath.Join(dir, segName(segs[len(segs)-1]))
			f, err := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
			if err != nil {
				t.Fatal(err)
			}
			f.Write(tc.tail(appendFrame(nil, rec(10))))
			f.Close()

			s = open(t, dir, Options{})
			defer s.Close()
			if st := s.Stats(); st.Pending != 10 {
				t.Fatalf("pending = %d, want 10", st.Pending)
			}
			s.Append(rec(10), rec(11))
			wantSeq(t, readAll(t, s, 3), 0, 12)
		})
	}
}

func TestCorruptRecordMidSegmentEndsSegmentOnRead(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir, Options{})
	for i := 0; i < 10; i++ {
		s.Append(rec(i))
	}
	// Corrupt record 5 in place, behind the reader's back.
	segs, _ := listSegments(dir)
	path := filepath.Join(dir, segName(segs[0]))
	frame := int64(len(appendFrame(nil, rec(0))))
	f, _ := os.OpenFile(path, os.O_WRONLY, 0)
	f.WriteAt([]byte("X"), 5*frame+headerSize)
	f.Close()
	got := readAll(t, s, 100)
	wantSeq(t, got, 0, 5)
	s.Close()
}

func TestBoundedByBytes(t *testing.T) {
	frame := int64(len(appendFrame(nil, rec(0))))
	s := open(t, t.TempDir(), Options{MaxBytes: 10*frame + frame/2, SegmentBytes: 3 * frame})
	defer s.Close()
	accepted := 0
	for i := 0; i < 25; i++ {
		n, err := s.Append(rec(i))
		if err != nil && !errors.Is(err, ErrFull) {
			t.Fatal(err)
		}
		accepted += n
	}
	st := s.Stats()
	if accepted != 10 || st.Dropped != 15 || st.Appended != 10 {
		t.Fatalf("accepted %d, stats %+v: want 10 accepted, 15 dropped", accepted, st)
	}
	// Batch append is all-or-prefix.
	if n, err := s.Append(rec(1), rec(2)); n != 0 || !errors.Is(err, ErrFull) {
		t.Fatalf("append to full spool: %d, %v", n, err)
	}
	wantSeq(t, readAll(t, s, 4), 0, 10)
	// Draining frees the space.
	if n, err := s.Append(rec(10), rec(11)); n != 2 || err != nil {
		t.Fatalf("append after drain: %d, %v", n, err)
	}
}

func TestCrashDuringReplayResendsOnlyUnackedTail(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir, Options{SegmentBytes: 2000})
	for i := 0; i < 1000; i++ {
		s.Append(rec(i))
	}
	// Replay in batches of 64; "crash" after reading the 8th batch without
	// acknowledging it.
	pos := s.Acked()
	for b := 0; b < 8; b++ {
		recs, next, err := s.Read(pos, 64)
		if err != nil || len(recs) != 64 {
			t.Fatalf("batch %d: %d records, %v", b, len(recs), err)
		}
		if b < 7 {
			if err := s.Ack(next); err != nil {
				t.Fatal(err)
			}
		}
		pos = next
	}
	s.Close()
	s = open(t, dir, Options{SegmentBytes: 2000})
	defer s.Close()
	wantSeq(t, readAll(t, s, 100), 7*64, 1000)
}

func TestConcurrentAppendWhileReading(t *testing.T) {
	s := open(t, t.TempDir(), Options{SegmentBytes: 4096})
	defer s.Close()
	const writers, per = 8, 2000
	var wg sync.WaitGroup
	for w := 0; w < writers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < per; i++ {
				if _, err := s.Append([]byte(fmt.Sprintf("w%d-%06d", w, i))); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	seen := map[string]bool{}
	last := make([]int, writers)
	for i := range last {
		last[i] = -1
	}
	pos := s.Acked()
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	deadline := time.Now().Add(30 * time.Second)
	for finished := false; ; {
		if time.Now().After(deadline) {
			t.Fatalf("reader did not catch up with the writers: read %d of %d", len(seen), writers*per)
		}
		select {
		case <-done:
			finished = true
		default:
		}
		recs, next, err := s.Read(pos, 100)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range recs {
			var w, i int
			fmt.Sscanf(string(r), "w%d-%d", &w, &i)
			if seen[string(r)] || i != last[w]+1 {
				t.Fatalf("record %q out of order or repeated (last %d)", r, last[w])
			}
			seen[string(r)] = true
			last[w] = i
		}
		if len(recs) > 0 {
			if err := s.Ack(next); err != nil {
				t.Fatal(err)
			}
			pos = next
		} else if finished {
			break
		}
	}
	if len(seen) != writers*per || s.Stats().Pending != 0 {
		t.Fatalf("read %d, pending %d", len(seen), s.Stats().Pending)
	}
}

func TestSecondOpenIsRefused(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir, Options{})
	defer s.Close()
	if _, err := Open(dir, Options{MaxBytes: 1 << 20}); err == nil {
		t.Fatal("second Open of the same dir succeeded")
	}
}
