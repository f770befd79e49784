// Package spool is an append-only, bounded, on-disk queue of records, used
// to hold usage events while NATS is unreachable and to replay them, in
// order, once it is back.
//
// Guarantees:
//   - A record is in the page cache (and survives a process crash) when
//     Append returns. On Linux the segment being appended to is mapped
//     into memory (mmap, MAP_SHARED): an append is a copy into the file's
//     own pages under a mutex, no system call; the file's blocks are
//     reserved ahead (fallocate, 1 MiB at a time), so a full disk is an
//     error from Append, never a fault at a store. Elsewhere, or where the
//     file system cannot reserve blocks, each Append is one write(2).
//     fsync happens in batches, every Options.SyncInterval, on segment
//     rotation and on Close: a machine crash can lose at most the last
//     interval.
//   - The spool is bounded by Options.MaxBytes of segment files. A record
//     that does not fit is rejected with ErrFull and counted as dropped;
//     that is the only way a record is lost.
//   - Records are read back in append order. The reader's acknowledged
//     position is persisted by Ack; after a crash, reading resumes there, so
//     at most the records read but not yet acknowledged are read again.
//   - A torn or corrupt record (a crash in the middle of a write) ends its
//     segment: Open truncates it away, and the reader skips past any it
//     still finds. So does the reserved, never written tail (zeros) that a
//     crashed process leaves after a mapped segment's last record.
//
// One process at a time may open a directory (flock). Append may be called
// from any goroutine; Read and Ack are meant for one reader.
package spool

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"
)

// ErrFull is returned by Append for records that did not fit in MaxBytes.
var ErrFull = errors.New("spool: full")

// ErrClosed is returned by calls after Close.
var ErrClosed = errors.New("spool: closed")

// Options bound and tune a spool.
type Options struct {
	// MaxBytes bounds the total size of segment files (required).
	MaxBytes int64
	// SegmentBytes is the size at which a new segment is started (default
	// MaxBytes/8, between 4 KiB and 64 MiB). Fully acknowledged segments
	// are deleted.
	SegmentBytes int64
	// SyncInterval is how often appended data is fsync'd (default 100ms).
	SyncInterval time.Duration
	Logger       *slog.Logger

	// noMap makes appends use write(2) even where segments can be mapped
	// (tests of that path).
	noMap bool
}

// reserveStep is how much of a mapped segment's file is reserved at a time.
const reserveStep = 1 << 20

// errEmpty is returned by Append for an empty record: on disk, a zero
// length marks where a segment's data ends.
var errEmpty = errors.New("spool: empty record")

type segment struct {
	seq  uint64
	size int64 // bytes of whole records written
}

// Stats is a snapshot of the spool.
type Stats struct {
	// Pending is the number of records appended and not yet acknowledged.
	Pending uint64
	// Bytes is the size of all segment files, acknowledged parts included
	// until their segment is deleted; it is what MaxBytes bounds.
	Bytes    int64
	Segments int
	// Written is the number of records ever appended (Written()).
	Written uint64
	// Appended and Dropped count records since Open.
	Appended uint64
	Dropped  uint64
}

// Spool is an open spool directory.
type Spool struct {
	dir  string
	opts Options
	log  *slog.Logger
	lock *os.File

	// mu guards segs, active, amap, reserved, total, written, acked,
	// dirty, dirDirty, closed and wbuf. I/O under it is limited to the
	// append (a copy into amap, or a write), reserving blocks and rotation.
	mu     sync.Mutex
	segs   []segment // ascending; the last one is active
	active *os.File
	// amap is the active segment's file mapped into memory (nil: appends
	// use write(2)); reserved is how much of that file has blocks reserved,
	// its size on disk until the segment is sealed.
	amap     []byte
	reserved int64
	total    int64
	written  uint64 // records ever appended: N of the next record
	acked    Pos
	dirty    bool
	dirDirty bool
	closed   bool
	wbuf     []byte // frames being appended, reused across Appends

	// readMu guards rf and rfSeq, the reader's open segment.
	readMu sync.Mutex
	rf     *os.File
	rfSeq  uint64

	// ackMu serializes Ack calls so that acks are written in order, and
	// guards ackf (the ack file, open once acked) and ackDirty (an ack was
	// written since the last sync).
	ackMu    sync.Mutex
	ackf     *os.File
	ackDirty bool

	appended atomic.Uint64
	dropped  atomic.Uint64

	closeOnce sync.Once
	stop      chan struct{}
	done      chan struct{}
}

// Open opens or creates the spool in dir, drops torn tails, deletes
// segments that are fully acknowledged and starts a fresh segment for
// appends.
func Open(dir string, opts Options) (*Spool, error) {
	if opts.MaxBytes <= 0 {
		return nil, fmt.Errorf("spool: MaxBytes must be positive")
	}
	if opts.SegmentBytes <= 0 {
		opts.SegmentBytes = min(max(opts.MaxBytes/8, 4<<10), 64<<20)
	}
	if opts.SyncInterval <= 0 {
		opts.SyncInterval = 100 * time.Millisecond
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("creating spool dir: %w", err)
	}
	lock, err := lockDir(dir)
	if err != nil {
		return nil, err
	}
	s := &Spool{dir: dir, opts: opts, log: opts.Logger, lock: lock,
		stop: make(chan struct{}), done: make(chan struct{})}
	if err := s.recover(); err != nil {
		lock.Close()
		return nil, err
	}
	go s.syncLoop()
	return s, nil
}

// recover loads the ack position, validates every segment and opens a new
// active segment.
func (s *Spool) recover() error {
	acked := Pos{}
	b, err := os.ReadFile(filepath.Join(s.dir, ackName))
	switch {
	case errors.Is(err, os.ErrNotExist):
	case err != nil:
		return fmt.Errorf("reading spool ack: %w", err)
	default:
		if acked, err = decodeAck(b); err != nil {
			// Re-sending everything is safe; losing events is not.
			s.log.Warn("spool ack file corrupt; replaying from the oldest segment", "dir", s.dir)
			acked = Pos{}
		}
	}
	seqs, err := listSegments(s.dir)
	if err != nil {
		return err
	}
	var pending uint64
	for _, seq := range seqs {
		path := filepath.Join(s.dir, segName(seq))
		if seq < acked.Seg {
			if err := os.Remove(path); err != nil {
				return fmt.Errorf("removing acknowledged segment: %w", err)
			}
			continue
		}
		size, records, err := s.validate(path, seq, acked)
		if err != nil {
			return err
		}
		pending += records
		s.segs = append(s.segs, segment{seq: seq, size: size})
		s.total += size
	}
	if len(s.segs) == 0 || s.segs[0].seq != acked.Seg {
		// The acknowledged segment is gone: start at the oldest one left.
		first := acked.Seg + 1
		if len(s.segs) > 0 {
			first = s.segs[0].seq
		}
		acked = Pos{Seg: first, N: acked.N}
	}
	s.acked = acked
	s.written = acked.N + pending
	next := acked.Seg
	if len(s.segs) > 0 {
		next = s.segs[len(s.segs)-1].seq + 1
	}
	if next == 0 {
		next = 1
	}
	return s.openSegment(next)
}

// validate scans a segment, truncates an invalid tail and counts the
// records after the ack position.
func (s *Spool) validate(path string, seq uint64, acked Pos) (size int64, records uint64, err error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return 0, 0, fmt.Errorf("reading spool segment: %w", err)
	}
	var off int
	for off < len(data) {
		_, n, ok := parseFrame(data[off:])
		if !ok {
			break
		}
		if seq > acked.Seg || int64(off) >= acked.Off {
			records++
		}
		off += n
	}
	if off < len(data) {
		if allZero(data[off:]) {
			// The reserved, unwritten end of a mapped segment whose
			// process did not close it.
			s.log.Debug("spool segment: trimming its unwritten reserved tail", "segment", path, "bytes", len(data)-off)
		} else {
			s.log.Warn("spool segment has a torn or corrupt tail; skipping it",
				"segment", path, "valid_bytes", off, "dropped_bytes", len(data)-off)
		}
		if err := os.Truncate(path, int64(off)); err != nil {
			return 0, 0, fmt.Errorf("truncating torn spool segment: %w", err)
		}
	}
	return int64(off), records, nil
}

// openSegment makes seq the active segment. Callers hold mu (or own s
// exclusively, as recover does).
func (s *Spool) openSegment(seq uint64) error {
	f, err := os.OpenFile(filepath.Join(s.dir, segName(seq)), os.O_CREATE|os.O_RDWR|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("creating spool segment: %w", err)
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return fmt.Errorf("creating spool segment: %w", err)
	}
	if n := len(s.segs); n == 0 || s.segs[n-1].seq != seq {
		s.segs = append(s.segs, segment{seq: seq, size: st.Size()})
		s.total += st.Size()
	}
	s.active = f
	s.dirDirty = true
	s.amap, s.reserved = nil, st.Size()
	if !s.opts.noMap && st.Size() == 0 {
		// Room for a full segment and a record past its end (a segment
		// holds at least one record, whatever its size). Only what is
		// reserved is ever touched.
		n := s.opts.SegmentBytes + headerSize + MaxRecordSize
		if m, err := mapFile(f, n); err == nil {
			s.amap = m
		}
	}
	return nil
}

// reserveLocked reserves the active mapped segment's blocks up to at least
// end. If the file system cannot, the segment goes on with write(2) (and a
// full disk then fails the write as it would without the mapping).
func (s *Spool) reserveLocked(end int64) {
	n := max(reserveStep, end-s.reserved)
	if s.reserved+n > int64(len(s.amap)) {
		n = int64(len(s.amap)) - s.reserved
	}
	err := errors.New("segment mapping too small")
	if s.reserved+n >= end {
		err = allocate(s.active, s.reserved, n)
	}
	if err == nil {
		s.reserved += n
		return
	}
	s.log.Warn("spool: cannot reserve space for a mapped segment; appending with write(2)", "dir", s.dir, "err", err)
	size := s.segs[len(s.segs)-1].size
	if uerr := s.unmapLocked(size); uerr != nil {
		s.log.Warn("spool: unmapping segment", "err", uerr)
	}
}

// unmapLocked ends the active segment's mapping and cuts its file to the
// size of its records (the reserved tail goes). Appends after it use
// write(2).
func (s *Spool) unmapLocked(size int64) error {
	if s.amap == nil {
		return nil
	}
	err := unmapFile(s.amap)
	s.amap = nil
	if terr := s.active.Truncate(size); terr != nil && err == nil {
		err = terr
	}
	s.reserved = size
	return err
}

// closeActiveLocked unmaps, trims and closes the active segment, fsyncing
// it first when sync is set and it holds unsynced appends.
func (s *Spool) closeActiveLocked(sync bool) error {
	err := s.unmapLocked(s.segs[len(s.segs)-1].size)
	if sync && s.dirty {
		if serr := s.active.Sync(); serr != nil && err == nil {
			err = serr
		}
	}
	s.dirty = false
	if cerr := s.active.Close(); cerr != nil && err == nil {
		err = cerr
	}
	return err
}

// Append writes records in order with one write per segment touched. It
// returns how many were accepted; the rest did not fit (ErrFull) or could
// not be written, and are counted as dropped.
func (s *Spool) Append(payloads ...[]byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		s.dropped.Add(uint64(len(payloads)))
		return 0, ErrClosed
	}
	accepted, err := s.appendLocked(payloads)
	s.written += uint64(accepted)
	s.appended.Add(uint64(accepted))
	if accepted < len(payloads) {
		s.dropped.Add(uint64(len(payloads) - accepted))
	}
	return accepted, err
}

func (s *Spool) appendLocked(payloads [][]byte) (int, error) {
	buf := s.wbuf[:0]
	defer func() {
		if cap(buf) <= 1<<20 {
			s.wbuf = buf[:0]
		}
	}()
	accepted, framed := 0, 0
	flush := func() error {
		if len(buf) == 0 {
			return nil
		}
		if err := s.writeLocked(buf); err != nil {
			return err
		}
		accepted += framed
		buf, framed = buf[:0], 0
		return nil
	}
	for _, p := range payloads {
		if len(p) == 0 {
			if err := flush(); err != nil {
				return accepted, err
			}
			return accepted, errEmpty
		}
		if len(p) > MaxRecordSize {
			if err := flush(); err != nil {
				return accepted, err
			}
			return accepted, fmt.Errorf("spool: record of %d bytes exceeds %d", len(p), MaxRecordSize)
		}
		frame := int64(headerSize + len(p))
		if s.total+int64(len(buf))+frame > s.opts.MaxBytes {
			if err := flush(); err != nil {
				return accepted, err
			}
			return accepted, ErrFull
		}
		used := s.segs[len(s.segs)-1].size + int64(len(buf))
		if used > 0 && used+frame > s.opts.SegmentBytes {
			if err := flush(); err != nil {
				return accepted, err
			}
			if err := s.rotateLocked(); err != nil {
				return accepted, err
			}
		}
		buf = appendFrame(buf, p)
		framed++
	}
	return accepted, flush()
}

// writeLocked appends whole frames to the active segment: a copy into its
// mapping, or a write. On a failed or short write it cuts the file back so
// that no partial frame is followed by good ones.
func (s *Spool) writeLocked(buf []byte) error {
	act := &s.segs[len(s.segs)-1]
	if s.amap != nil {
		end := act.size + int64(len(buf))
		if end > s.reserved {
			s.reserveLocked(end)
		}
		if s.amap != nil {
			copy(s.amap[act.size:end], buf)
			act.size = end
			s.total += int64(len(buf))
			s.dirty = true
			return nil
		}
	}
	if _, err := s.active.Write(buf); err != nil {
		if terr := s.active.Truncate(act.size); terr != nil {
			// The tail is unknown: leave it behind in a sealed segment.
			_ = s.rotateLocked()
		}
		return fmt.Errorf("appending to spool: %w", err)
	}
	act.size += int64(len(buf))
	s.total += int64(len(buf))
	s.dirty = true
	return nil
}

// rotateLocked seals the active segment (fsync, close) and opens the next.
// It runs once per SegmentBytes, so the fsync under mu is rare.
func (s *Spool) rotateLocked() error {
	seq := s.segs[len(s.segs)-1].seq
	if err := s.closeActiveLocked(true); err != nil {
		s.log.Warn("spool: sealing a segment on rotation failed", "err", err)
	}
	return s.openSegment(seq + 1)
}

// Sync fsyncs appended data. It runs every SyncInterval and on Close;
// callers need it only for a stronger guarantee at a point of their
// choosing.
func (s *Spool) Sync() error {
	s.mu.Lock()
	f, dirty, dirDirty := s.active, s.dirty, s.dirDirty
	s.dirty, s.dirDirty = false, false
	s.mu.Unlock()
	if dirDirty {
		if err := syncDir(s.dir); err != nil {
			return fmt.Errorf("syncing spool dir: %w", err)
		}
	}
	if dirty && f != nil {
		// fsync writes the mapped segment's stored pages too. A concurrent
		// rotation may have synced and closed f already.
		if err := f.Sync(); err != nil && !errors.Is(err, os.ErrClosed) {
			return fmt.Errorf("syncing spool: %w", err)
		}
	}
	s.ackMu.Lock()
	af, ackDirty := s.ackf, s.ackDirty
	s.ackDirty = false
	s.ackMu.Unlock()
	if ackDirty {
		if err := datasync(af); err != nil && !errors.Is(err, os.ErrClosed) {
			return fmt.Errorf("syncing spool ack: %w", err)
		}
	}
	return nil
}

func (s *Spool) syncLoop() {
	defer close(s.done)
	t := time.NewTicker(s.opts.SyncInterval)
	defer t.Stop()
	for {
		select {
		case <-s.stop:
			return
		case <-t.C:
			if err := s.Sync(); err != nil {
				s.log.Warn("spool sync failed", "err", err)
			}
		}
	}
}

// Written is the number of records ever appended (acknowledged ones
// included): the N of the position after the last record.
func (s *Spool) Written() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.written
}

// Acked is the persisted read position: where reading starts after Open.
func (s *Spool) Acked() Pos {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.acked
}

// Stats returns a snapshot.
func (s *Spool) Stats() Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	return Stats{
		Pending:  s.written - s.acked.N,
		Written:  s.written,
		Bytes:    s.total,
		Segments: len(s.segs),
		Appended: s.appended.Load(),
		Dropped:  s.dropped.Load(),
	}
}

// Read returns up to max records starting at from (normally Acked(), or
// the position a previous Read returned) and the position after them. It
// returns no records when the reader has caught up with the writer.
// Payloads are fresh copies.
func (s *Spool) Read(from Pos, max int) ([][]byte, Pos, error) {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil, from, ErrClosed
	}
	segs := append([]segment(nil), s.segs...)
	s.mu.Unlock()

	s.readMu.Lock()
	defer s.readMu.Unlock()
	pos := from
	var out [][]byte
	for i := 0; i < len(segs) && len(out) < max; i++ {
		seg := segs[i]
		if seg.seq < pos.Seg {
			continue
		}
		if seg.seq > pos.Seg {
			pos = Pos{Seg: seg.seq, N: pos.N}
		}
		for pos.Off < seg.size && len(out) < max {
			recs, next, err := s.readSegment(seg, pos, max-len(out))
			if err != nil {
				return out, pos, err
			}
			out = append(out, recs...)
			pos = next
		}
	}
	return out, pos, nil
}

// readChunk is how much of a segment one read takes: a few hundred
// events, the size of a publish batch, without a large allocation per read
// (larger records are read on their own).
const readChunk = 256 << 10

// readSegment reads whole records of seg from pos, up to max, within one
// chunk. A record that fails its checksum ends the segment.
func (s *Spool) readSegment(seg segment, pos Pos, max int) ([][]byte, Pos, error) {
	if s.rf == nil || s.rfSeq != seg.seq {
		if s.rf != nil {
			s.rf.Close()
			s.rf = nil
		}
		f, err := os.Open(filepath.Join(s.dir, segName(seg.seq)))
		if err != nil {
			return nil, pos, fmt.Errorf("opening spool segment: %w", err)
		}
		s.rf, s.rfSeq = f, seg.seq
	}
	n := min(seg.size-pos.Off, readChunk)
	buf := make([]byte, n)
	if _, err := s.rf.ReadAt(buf, pos.Off); err != nil && !errors.Is(err, io.EOF) {
		return nil, pos, fmt.Errorf("reading spool segment: %w", err)
	}
	var out [][]byte
	off := 0
	for off < len(buf) && len(out) < max {
		payload, size, ok := parseFrame(buf[off:])
		if ok {
			out = append(out, payload)
			off += size
			continue
		}
		if off == 0 && len(buf) >= headerSize && int64(len(buf)) < seg.size-pos.Off {
			// A record larger than the chunk: read exactly that record.
			need := headerSize + int(be32(buf))
			if need <= MaxRecordSize+headerSize && int64(need) <= seg.size-pos.Off {
				big := make([]byte, need)
				if _, err := s.rf.ReadAt(big, pos.Off); err != nil && !errors.Is(err, io.EOF) {
					return nil, pos, fmt.Errorf("reading spool segment: %w", err)
				}
				if payload, size, ok := parseFrame(big); ok {
					return [][]byte{payload}, Pos{Seg: pos.Seg, Off: pos.Off + int64(size), N: pos.N + 1}, nil
				}
			}
		}
		if off > 0 && int64(len(buf)) < seg.size-pos.Off {
			break // the next record continues past this chunk
		}
		s.log.Warn("spool: corrupt record; skipping the rest of the segment",
			"segment", segName(seg.seq), "offset", pos.Off+int64(off))
		return out, Pos{Seg: pos.Seg, Off: seg.size, N: pos.N + uint64(len(out))}, nil
	}
	return out, Pos{Seg: pos.Seg, Off: pos.Off + int64(off), N: pos.N + uint64(len(out))}, nil
}

func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

func be32(b []byte) uint32 {
	return uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
}

// Ack persists p (a position returned by Read) as the acknowledged read
// position and deletes segments it has moved past. When p is the end of
// everything written, the spool starts a fresh segment and the old one is
// deleted: a drained spool holds no data.
func (s *Spool) Ack(p Pos) error {
	s.ackMu.Lock()
	defer s.ackMu.Unlock()
	if s.ackf == nil {
		f, err := os.OpenFile(filepath.Join(s.dir, ackName), os.O_CREATE|os.O_RDWR, 0o644)
		if err != nil {
			return fmt.Errorf("opening spool ack: %w", err)
		}
		s.ackf = f
	}
	if err := writeAck(s.ackf, p); err != nil {
		return err
	}
	s.ackDirty = true
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return ErrClosed
	}
	s.acked = p
	last := s.segs[len(s.segs)-1]
	if p.Seg == last.seq && p.Off == last.size && last.size > 0 {
		// Everything is read: the segment goes, unsynced.
		if err := s.closeActiveLocked(false); err != nil {
			s.log.Warn("spool: closing a drained segment", "err", err)
		}
		if err := s.openSegment(last.seq + 1); err != nil {
			s.mu.Unlock()
			return err
		}
		s.acked = Pos{Seg: last.seq + 1, N: p.N}
	}
	var gone []uint64
	for len(s.segs) > 1 && s.segs[0].seq < s.acked.Seg {
		gone = append(gone, s.segs[0].seq)
		s.total -= s.segs[0].size
		s.segs = s.segs[1:]
	}
	s.mu.Unlock()

	for _, seq := range gone {
		if err := os.Remove(filepath.Join(s.dir, segName(seq))); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("removing spool segment: %w", err)
		}
	}
	return nil
}

// Close stops the sync loop, fsyncs and releases the directory.
func (s *Spool) Close() error {
	var err error
	s.closeOnce.Do(func() { err = s.close() })
	return err
}

func (s *Spool) close() error {
	close(s.stop)
	<-s.done
	err := s.Sync()
	s.mu.Lock()
	s.closed = true
	if cerr := s.closeActiveLocked(true); cerr != nil && err == nil {
		err = cerr
	}
	s.mu.Unlock()
	s.readMu.Lock()
	if s.rf != nil {
		s.rf.Close()
		s.rf = nil
	}
	s.readMu.Unlock()
	s.ackMu.Lock()
	if s.ackf != nil {
		s.ackf.Close()
		s.ackf = nil
	}
	s.ackMu.Unlock()
	s.lock.Close()
	return err
}
