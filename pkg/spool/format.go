package spool

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"os"
	"sort"
	"strconv"
	"strings"
)

// On disk a spool directory holds:
//
//	00000000000000000001.seg  segment files, appended in order
//	ack                       the acknowledged read position
//	LOCK                      flock'd by the process that has the spool open
//
// A segment is a sequence of records, each
//
//	[4 bytes payload length, big endian][4 bytes CRC-32C of payload][payload]
//
// A record is valid when its payload is not empty, its whole frame is
// present and the checksum matches (a zero length marks the end of a
// mapped segment's data: what follows it was reserved, never written). Reading a segment stops at the first invalid record: a crash can
// tear only the last write, so whatever follows it is garbage.
const (
	headerSize = 8
	segSuffix  = ".seg"
	ackName    = "ack"
	ackSize    = 8 + 8 + 8 + 4
	// MaxRecordSize bounds one payload; a length field above it marks a torn
	// or corrupt record.
	MaxRecordSize = 16 << 20
)

var crcTable = crc32.MakeTable(crc32.Castagnoli)

// Pos is a read position: a byte offset in a segment plus N, the number of
// records ever acknowledged before it. N lets the spool count pending
// records without rescanning.
type Pos struct {
	Seg uint64
	Off int64
	N   uint64
}

func segName(seg uint64) string { return fmt.Sprintf("%020d%s", seg, segSuffix) }

func appendFrame(buf, payload []byte) []byte {
	var h [headerSize]byte
	binary.BigEndian.PutUint32(h[0:4], uint32(len(payload)))
	binary.BigEndian.PutUint32(h[4:8], crc32.Checksum(payload, crcTable))
	buf = append(buf, h[:]...)
	return append(buf, payload...)
}

// parseFrame decodes the record at the start of b. It returns the payload
// and the frame size, or ok=false when b holds no complete valid record.
func parseFrame(b []byte) (payload []byte, size int, ok bool) {
	if len(b) < headerSize {
		return nil, 0, false
	}
	n := binary.BigEndian.Uint32(b[0:4])
	if n == 0 || n > MaxRecordSize || int(n) > len(b)-headerSize {
		return nil, 0, false
	}
	payload = b[headerSize : headerSize+int(n)]
	if crc32.Checksum(payload, crcTable) != binary.BigEndian.Uint32(b[4:8]) {
		return nil, 0, false
	}
	return payload, headerSize + int(n), true
}

// listSegments returns the segment numbers in dir, ascending.
func listSegments(dir string) ([]uint64, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("listing spool %s: %w", dir, err)
	}
	var segs []uint64
	for _, e := range entries {
		name := e.Name()
		if !strings.HasSuffix(name, segSuffix) {
			continue
		}
		n, err := strconv.ParseUint(strings.TrimSuffix(name, segSuffix), 10, 64)
		if err != nil {
			continue
		}
		segs = append(segs, n)
	}
	sort.Slice(segs, func(i, j int) bool { return segs[i] < segs[j] })
	return segs, nil
}

func encodeAck(p Pos) []byte {
	b := make([]byte, ackSize)
	binary.BigEndian.PutUint64(b[0:8], p.Seg)
	binary.BigEndian.PutUint64(b[8:16], uint64(p.Off))
	binary.BigEndian.PutUint64(b[16:24], p.N)
	binary.BigEndian.PutUint32(b[24:28], crc32.Checksum(b[:24], crcTable))
	return b
}

var errBadAck = errors.New("ack file is corrupt")

func decodeAck(b []byte) (Pos, error) {
	if len(b) != ackSize || crc32.Checksum(b[:24], crcTable) != binary.BigEndian.Uint32(b[24:28]) {
		return Pos{}, errBadAck
	}
	return Pos{
		Seg: binary.BigEndian.Uint64(b[0:8]),
		Off: int64(binary.BigEndian.Uint64(b[8:16])),
		N:   binary.BigEndian.Uint64(b[16:24]),
	}, nil
}

// writeAck overwrites the ack record in place (one pwrite of ackSize
// bytes at offset 0; f stays open between acks). It is on disk once the
// spool's next sync has run (every SyncInterval). A torn or lost ack fails
// its checksum or is older: either only means re-sending what it covered,
// which the stream deduplicates.
func writeAck(f *os.File, p Pos) error {
	if _, err := f.WriteAt(encodeAck(p), 0); err != nil {
		return fmt.Errorf("writing spool ack: %w", err)
	}
	return nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
