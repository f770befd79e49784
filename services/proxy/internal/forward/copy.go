package forward

import (
	"errors"
	"io"
	"net/http"
	"sync"
	"time"

	"github.com/droverhq/drover/services/proxy/internal/meter"
	"github.com/droverhq/drover/services/proxy/internal/sse"
)

// The end of an answer is held back until its usage event is recorded.
//
// A streamed answer whose dialect knows its last chunk (Exchange.Complete:
// Ollama's "done":true, OpenAI's data: [DONE], Anthropic's message_stop, a
// Response's last event) goes to the client chunk by chunk as it arrives;
// the read that completes it is kept, with the reads after it up to the end
// of its line (a final chunk split across reads: Ollama's generate carries
// its context between "done":true and its counts, so a body that breaks
// there is cut, not whole; at most maxHeldEnd bytes), the event is recorded,
// and only then is what was kept written, and whatever the backend still
// sends after it passed on. Only that end waits, and only for the append,
// so the stream gets no latency per chunk. A plain body is written one byte behind
// what was read: its last byte goes out after the event. A streamed answer
// whose end is not recognisable (progress of /api/pull) is recorded after
// its last byte.

// copied is what copy saw of a body.
type copied struct {
	ttfb time.Time
	// clientGone: a write to the client failed (writeErr says why).
	clientGone bool
	writeErr   error
	// err is the backend body's read error (nil: it ended cleanly, or
	// more is set).
	err error
	// held is the end of the answer, not yet written; more: the body may
	// go on after it (a stream whose end was recognised before its EOF).
	held []byte
	more bool
	// chunks counts the content chunks a stream carried (countContent),
	// the output tokens of an answer cut short.
	chunks int64
	// shape, when set, follows a plain JSON body's nesting: a body whose
	// end is only the connection's (see verifyEnd) is whole when it closes
	// its outermost value.
	shape *jsonShape

	mh *meterHolder
}

func (c *copied) meter() *meter.Meter { return &c.mh.m }

// release returns the meter and the held buffer's storage to their pools;
// held stays readable only until then, so end copies nothing and runs
// before it.
func (c *copied) release() {
	if c.mh != nil {
		c.mh.m.Reset()
		c.mh.probe.Reset()
		meterPool.Put(c.mh)
		c.mh = nil
	}
}

// meterHolder lets Meters (and their buffers) be reused across requests.
// probe looks at the end of the stream only, so that judging each chunk
// complete costs the chunk's size, not the meter's tail's.
type meterHolder struct{ m, probe meter.Meter }

var meterPool = sync.Pool{New: func() any { return &meterHolder{} }}

// maxHeldEnd bounds the end of a stream held back while its line is
// finished; an end line longer than that (a generate's context array of
// many thousand tokens) goes out once this much of it was read, as its
// first read did before.
const maxHeldEnd = 1 << 20

// probeBefore is how much of what came before a chunk the probe sees with
// it, for an end marker split across two reads.
const probeBefore = 64

// copy streams body to out (through filter, when set), flushing each read
// when streaming, and holds back the end of the answer (see above). done
// (nil: unknown) judges the bytes seen complete; verify follows a plain
// body's JSON shape (verifyEnd).
func (f *Forwarder) copy(out *output, filter io.WriteCloser, body io.Reader, stream bool, done func(*meter.Meter) bool, verify bool) *copied {
	bp := bufPool.Get().(*[]byte)
	defer bufPool.Put(bp)
	c := &copied{mh: meterPool.Get().(*meterHolder)}
	if verify {
		c.shape = &jsonShape{}
	}
	buf := *bp
	dst := io.Writer(out)
	if filter != nil {
		dst = filter
	}
	write := func(p []byte) bool {
		err := out.chunk(dst, p, stream)
		switch {
		case err == nil:
			return true
		case errors.Is(err, sse.ErrEventTooLarge):
			// The backend sent an event past the filter's bound: its
			// stream broke, the client did not leave.
			c.err = err
		default:
			c.writeErr, c.clientGone = err, true
		}
		return false
	}
	var carry [1]byte // a plain body's last byte read, when off is 1
	off := 0
	for {
		copy(buf, carry[:off])
		n, err := body.Read(buf[off:])
		if n > 0 && c.ttfb.IsZero() {
			c.ttfb = time.Now()
		}
		chunk := buf[off : off+n]
		if n > 0 {
			c.mh.m.Write(chunk) //nolint:errcheck // never fails
			if stream {
				c.chunks += countContent(chunk)
			}
			if c.shape != nil {
				c.shape.Write(chunk)
			}
		}
		switch {
		case n == 0:
		case stream && done != nil && (len(c.held) > 0 || c.ends(chunk, done)):
			c.held = append(c.held, chunk...)
			if err == nil && (c.held[len(c.held)-1] == '\n' || len(c.held) >= maxHeldEnd) {
				c.more = true
				return c
			}
			if err == nil {
				continue // the line that completes the answer goes on
			}
		case stream:
			if !write(chunk) {
				return c
			}
		default:
			// A plain body goes out one byte behind what was read.
			all := buf[:off+n]
			if !write(all[:len(all)-1]) {
				return c
			}
			carry[0], off = all[len(all)-1], 1
		}
		if err == nil {
			continue
		}
		if errors.Is(err, io.EOF) {
			c.held = append(c.held, carry[:off]...)
			return c
		}
		c.err = err
		return c
	}
}

// ends reports whether the stream is complete with chunk: done asked of a
// meter holding the chunk and the few bytes before it.
func (c *copied) ends(chunk []byte, done func(*meter.Meter) bool) bool {
	tail := c.mh.m.Tail()
	from := max(len(tail)-len(chunk)-probeBefore, 0)
	c.mh.probe.Reset()
	c.mh.probe.Write(tail[from:]) //nolint:errcheck // never fails
	return done(&c.mh.probe)
}

// output is the client's side of one answer: the ResponseWriter, a write
// deadline per chunk, and the last bytes written (where an error event must
// start a new line or event).
type output struct {
	rw      http.ResponseWriter
	rc      *http.ResponseController
	timeout time.Duration // 0: no write deadline
	// status is the answer's status, sent with its first byte or flush
	// (commit), not before: until then a body that fails can still be
	// answered with an error status instead (headSent false).
	status   int
	headSent bool
	// deadline is the write deadline set on the connection (zero: none
	// yet), moved on only when a chunk's own would be deadlineSlack later.
	deadline time.Time
	last     [2]byte
	wrote    int
}

// deadlineSlack is how much earlier than routing.write_timeout after its
// start a chunk's write may be cut off: a sixteenth of the timeout (under
// 2 s of the default 30 s). Setting a connection's deadline costs a
// runtime timer update; a stream's chunks, milliseconds apart, would
// each move it, where this moves it about once a request.
func deadlineSlack(timeout time.Duration) time.Duration { return timeout / 16 }

func (f *Forwarder) newOutput(w http.ResponseWriter) *output {
	return &output{rw: w, rc: http.NewResponseController(w), timeout: f.WriteTimeout}
}

// Write passes p to the client and remembers its last bytes. A filter
// writes through it too.
func (o *output) Write(p []byte) (int, error) {
	o.commit()
	n, err := o.rw.Write(p)
	switch {
	case n >= 2:
		o.last = [2]byte{p[n-2], p[n-1]}
	case n == 1:
		o.last = [2]byte{o.last[1], p[0]}
	}
	o.wrote += n
	return n, err
}

// chunk writes p to dst within the write timeout, and flushes it when
// streaming.
func (o *output) chunk(dst io.Writer, p []byte, flush bool) error {
	o.armDeadline()
	if _, err := dst.Write(p); err != nil {
		return err
	}
	if flush {
		o.commit()
		if err := o.rc.Flush(); err != nil && !errors.Is(err, http.ErrNotSupported) {
			return err
		}
	}
	return nil
}

// commit sends the head writeHead prepared, once.
func (o *output) commit() {
	if o.headSent {
		return
	}
	o.headSent = true
	o.rw.WriteHeader(o.status)
}

// clearDeadline lifts the write deadline, which would otherwise outlive the
// request on a kept-alive connection.
func (o *output) clearDeadline() {
	if !o.deadline.IsZero() {
		o.rc.SetWriteDeadline(time.Time{}) //nolint:errcheck // it was settable in armDeadline
	}
}

// armDeadline gives the write about to start at least timeout minus
// deadlineSlack, and at most timeout, to complete: a client that stops
// reading loses the request within the timeout, as with a deadline set
// per chunk.
func (o *output) armDeadline() {
	if o.timeout <= 0 {
		return
	}
	d := time.Now().Add(o.timeout)
	if !o.deadline.IsZero() && d.Sub(o.deadline) < deadlineSlack(o.timeout) {
		return
	}
	if err := o.rc.SetWriteDeadline(d); err != nil {
		// Not supported by a test recorder: then unbounded.
		o.timeout = 0
		return
	}
	o.deadline = d
}

// end writes what copy held back, passes on whatever the backend sends
// after a recognised end, and closes the filter: the answer's end, once
// its usage event is recorded.
func (o *output) end(c *copied, filter io.WriteCloser, body io.Reader, stream bool) {
	o.commit() // the body was whole: an empty one too has its head
	dst := io.Writer(o)
	if filter != nil {
		dst = filter
	}
	if len(c.held) > 0 && o.chunk(dst, c.held, stream) != nil {
		return
	}
	if c.more {
		bp := bufPool.Get().(*[]byte)
		defer bufPool.Put(bp)
		for {
			n, err := body.Read(*bp)
			if n > 0 && o.chunk(dst, (*bp)[:n], stream) != nil {
				return
			}
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				// The answer was whole: a backend that then drops the
				// connection cut nothing.
				return
			}
		}
	}
	if filter != nil && filter.Close() != nil {
		return
	}
	if stream {
		o.rc.Flush() //nolint:errcheck // the client may be gone
	}
}

// bodyDst is where a body's bytes go: through the filter when there is one.
func bodyDst(out *output, filter io.WriteCloser) io.Writer {
	if filter != nil {
		return filter
	}
	return out
}
