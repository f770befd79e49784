package sse

import (
	"bytes"
	"testing"
)

// Whatever a backend sends and however its reads fall, the filter hands fn
// every byte exactly once, in order, split where a blank line ends an
// event; it writes what fn returns; it never holds more than the bound.
func FuzzEventFilter(f *testing.F) {
	f.Add([]byte("data: {\"a\":1}\n\ndata: [DONE]\n\n"), uint16(3))
	f.Add([]byte("event: x\r\ndata: a\r\n\r\n: ping\n\ndata: b"), uint16(1))
	f.Add([]byte("data: a\n\r\n\n\n\r\r\n"), uint16(2))
	f.Add(bytes.Repeat([]byte("data: long line without end "), 200), uint16(7))
	f.Fuzz(func(t *testing.T, stream []byte, split uint16) {
		size := int(split)%64 + 1
		SetMaxEvent(1024)
		defer SetMaxEvent(DefaultMaxEvent)
		var out, seen bytes.Buffer
		var events [][]byte
		fl := EventFilter(&out, func(ev []byte) []byte {
			seen.Write(ev)
			events = append(events, append([]byte(nil), ev...))
			EventData(ev)
			if bytes.Contains(ev, []byte("drop")) {
				return nil
			}
			return ev
		})
		var err error
		for i := 0; i < len(stream) && err == nil; i += size {
			_, err = fl.Write(stream[i:min(i+size, len(stream))])
		}
		if err == nil {
			err = fl.Close()
		}
		if err != nil {
			// Only an event over the bound fails the stream, and what was
			// handed on before it is a prefix of the stream.
			if !bytes.HasPrefix(stream, seen.Bytes()) || len(stream)-seen.Len() <= 1024 {
				t.Fatalf("failed with %v after %d of %d bytes", err, seen.Len(), len(stream))
			}
			return
		}
		if len(bytes.TrimSpace(stream[seen.Len():])) != 0 || !bytes.HasPrefix(stream, seen.Bytes()) {
			t.Fatalf("fn saw %q of %q", seen.Bytes(), stream)
		}
		var want bytes.Buffer
		for i, ev := range events {
			if i < len(events)-1 {
				if n, _ := eventEnd(ev, 0); n != len(ev) {
					t.Fatalf("event %q is not one whole event", ev)
				}
			}
			if !bytes.Contains(ev, []byte("drop")) {
				want.Write(ev)
			}
		}
		if !bytes.Equal(out.Bytes(), want.Bytes()) {
			t.Fatalf("client got %q, want %q", out.Bytes(), want.Bytes())
		}
	})
}
