// Package sse reads server-sent event streams as they pass through: it
// splits them into events, whatever the reads' boundaries, and reads an
// event's data.
package sse

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"sync/atomic"
)

// DefaultMaxEvent is how long one event may grow before a filter gives up
// on the stream (server.max_event_bytes): an event is held whole while it
// is incomplete, so this bounds what one stream can make the proxy hold.
const DefaultMaxEvent = 16 << 20

// maxEvent is the bound filters made from now on use (SetMaxEvent).
var maxEvent atomic.Int64

func init() { maxEvent.Store(DefaultMaxEvent) }

// SetMaxEvent sets the largest event a filter made after the call accepts
// (at least 1 KiB); the proxy sets it once from server.max_event_bytes.
func SetMaxEvent(n int) { maxEvent.Store(int64(max(n, 1024))) }

// ErrEventTooLarge is what a filter's Write returns, from then on, once an
// event grew past the bound without its blank line.
var ErrEventTooLarge = errors.New("server-sent event too large")

// EventFilter returns a filter (a dialect.Exchange's Transform) that splits a
// server-sent event stream into events and writes what fn returns for each
// in its place: the event itself to pass it on, nil to drop it, or other
// bytes to replace it. An event is handed to fn whole, with its
// terminating blank line; what a single backend read completes goes to the
// client in one write. A final event without its blank line is handed to
// fn at Close.
//
// The work is linear in the bytes written: each byte is scanned for the
// end of its event once (bar the two before a write's start, where a blank
// line may straddle two writes). An event longer than the bound
// (SetMaxEvent) fails the stream with ErrEventTooLarge; the events before
// it have been written.
func EventFilter(client io.Writer, fn func(event []byte) []byte) io.WriteCloser {
	return &eventFilter{w: client, fn: fn, max: int(maxEvent.Load())}
}

type eventFilter struct {
	w       io.Writer
	fn      func([]byte) []byte
	max     int    // bound on len(pending)
	pending []byte // an event not yet complete
	out     []byte // reused output buffer
	err     error  // ErrEventTooLarge once it happened
	scanned int64  // bytes examined for event ends, for tests of linearity
}

func (f *eventFilter) Write(p []byte) (int, error) {
	if f.err != nil {
		return 0, f.err
	}
	data, from := p, 0
	if len(f.pending) > 0 {
		// pending was scanned to its end and holds no blank line; only
		// one that starts in its last two bytes may end in p.
		from = max(len(f.pending)-2, 0)
		f.pending = append(f.pending, p...)
		data = f.pending
	}
	// While fn hands every event back as it was, the complete events go
	// out as one slice of data, uncopied; the first change switches to
	// building the output in f.out.
	out, same := f.out[:0], true
	start := 0
	for {
		n, scanned := eventEnd(data[start:], max(from-start, 0))
		f.scanned += int64(scanned)
		if n < 0 {
			break
		}
		ev := data[start : start+n]
		r := f.fn(ev)
		if same && (len(r) != len(ev) || (len(r) > 0 && &r[0] != &ev[0])) {
			same = false
			out = append(out, data[:start]...)
		}
		if !same {
			out = append(out, r...)
		}
		start += n
	}
	if same {
		out = data[:start]
	}
	var err error
	if len(out) > 0 {
		_, err = f.w.Write(out)
	}
	if !same {
		f.out = out[:0]
	}
	rest := data[start:]
	if len(rest) > f.max {
		f.err, f.pending = fmt.Errorf("%w: over %d bytes without a blank line", ErrEventTooLarge, f.max), nil
		return 0, f.err
	}
	switch {
	case len(f.pending) > 0 && start == 0:
		// pending is the incomplete event, as it is: no copy (a copy per
		// write would make one long event quadratic again).
	case len(f.pending) > 0:
		f.pending = f.pending[:copy(f.pending, rest)]
	default:
		f.pending = append(f.pending, rest...)
	}
	if err != nil {
		return 0, err
	}
	return len(p), nil
}

// Close hands a trailing unterminated event to fn.
func (f *eventFilter) Close() error {
	if f.err != nil {
		return f.err
	}
	if len(bytes.TrimSpace(f.pending)) == 0 {
		return nil
	}
	out := f.fn(f.pending)
	f.pending = f.pending[:0]
	if len(out) > 0 {
		_, err := f.w.Write(out)
		return err
	}
	return nil
}

// eventEnd returns the length of the first event in b including the blank
// line that ends it ("\n\n", "\r\n\r\n" or mixed), or -1; the search for
// its line ends starts at from. scanned is how many bytes it examined.
func eventEnd(b []byte, from int) (n, scanned int) {
	for i := from; ; {
		j := bytes.IndexByte(b[i:], '\n')
		if j < 0 {
			return -1, scanned + len(b) - i
		}
		k := i + j + 1
		scanned += j + 1
		if k < len(b) && b[k] == '\n' {
			return k + 1, scanned
		}
		if k+1 < len(b) && b[k] == '\r' && b[k+1] == '\n' {
			return k + 2, scanned
		}
		if k >= len(b) || (b[k] == '\r' && k+1 >= len(b)) {
			return -1, scanned
		}
		i = k
	}
}

// EventData returns the joined data of an SSE event ("data:" lines, one
// optional space after the colon stripped), or nil when it has none.
func EventData(event []byte) []byte {
	var data []byte
	lines := 0
	for len(event) > 0 {
		line := event
		if i := bytes.IndexByte(event, '\n'); i >= 0 {
			line, event = event[:i], event[i+1:]
		} else {
			event = nil
		}
		line = bytes.TrimSuffix(line, []byte{'\r'})
		rest, ok := bytes.CutPrefix(line, []byte("data:"))
		if !ok {
			continue
		}
		rest = bytes.TrimPrefix(rest, []byte{' '})
		if lines == 0 {
			data = rest
		} else {
			if lines == 1 {
				data = append([]byte(nil), data...)
			}
			data = append(append(data, '\n'), rest...)
		}
		lines++
	}
	return data
}
