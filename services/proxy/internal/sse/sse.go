// Package sse reads server-sent event streams as they pass through: it
// splits them into events, whatever the reads' boundaries, and reads an
// event's data.
package sse

import (
	"bytes"
	"io"
)

// EventFilter returns a filter (a dialect.Exchange's Transform) that splits a
// server-sent event stream into events and writes what fn returns for each
// in its place: the event itself to pass it on, nil to drop it, or other
// bytes to replace it. An event is handed to fn whole, with its
// terminating blank line; what a single backend read completes goes to the
// client in one write. A final event without its blank line is handed to
// fn at Close.
func EventFilter(client io.Writer, fn func(event []byte) []byte) io.WriteCloser {
	return &eventFilter{w: client, fn: fn}
}

type eventFilter struct {
	w       io.Writer
	fn      func([]byte) []byte
	pending []byte // an event not yet complete
	out     []byte // reused output buffer
}

func (f *eventFilter) Write(p []byte) (int, error) {
	data := p
	if len(f.pending) > 0 {
		f.pending = append(f.pending, p...)
		data = f.pending
	}
	// While fn hands every event back as it was, the complete events go
	// out as one slice of data, uncopied; the first change switches to
	// building the output in f.out.
	out, same := f.out[:0], true
	start := 0
	for {
		n := eventEnd(data[start:])
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
	if len(f.pending) > 0 {
		f.pending = f.pending[:copy(f.pending, rest)]
	} else {
		f.pending = append(f.pending, rest...)
	}
	if err != nil {
		return 0, err
	}
	return len(p), nil
}

// Close hands a trailing unterminated event to fn.
func (f *eventFilter) Close() error {
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
// line that ends it ("\n\n", "\r\n\r\n" or mixed), or -1.
func eventEnd(b []byte) int {
	for i := 0; ; {
		j := bytes.IndexByte(b[i:], '\n')
		if j < 0 {
			return -1
		}
		k := i + j + 1
		if k < len(b) && b[k] == '\n' {
			return k + 1
		}
		if k+1 < len(b) && b[k] == '\r' && b[k+1] == '\n' {
			return k + 2
		}
		if k >= len(b) || (b[k] == '\r' && k+1 >= len(b)) {
			return -1
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
