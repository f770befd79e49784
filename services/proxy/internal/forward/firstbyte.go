package forward

import (
	"context"
	"errors"
	"net/http/httptrace"
	"time"
)

// errFirstByte is the cause an attempt is cancelled with when its backend
// missed Forwarder.FirstByteTimeout.
var errFirstByte = errors.New("first byte timeout")

// coldLoad is the least a streamed request waits for its headers where its
// model is not known to be loaded: Ollama loads the model before the first
// chunk, and gives a load up to 5 minutes (OLLAMA_LOAD_TIMEOUT's default).
const coldLoad = 5 * time.Minute

// firstByte is one attempt's first-byte timer.
type firstByte struct {
	ctx   context.Context // the backend request's
	timer *time.Timer     // nil: no timeout
	after time.Duration
}

// startFirstByte arms the attempt's first-byte timer: on expiry it cancels
// the attempt with errFirstByte. For a streamed request the caller stops
// it when the response headers arrive; for another, it stops itself once
// the request is written (see Forwarder.FirstByteTimeout).
func (f *Forwarder) startFirstByte(ctx context.Context, cancel context.CancelCauseFunc, stream, loaded bool) *firstByte {
	fb := &firstByte{ctx: ctx, after: f.FirstByteTimeout}
	if fb.after <= 0 {
		return fb
	}
	if stream && !loaded {
		fb.after = max(fb.after, coldLoad)
	}
	fb.timer = time.AfterFunc(fb.after, func() { cancel(errFirstByte) })
	if !stream {
		t := fb.timer
		fb.ctx = httptrace.WithClientTrace(ctx, &httptrace.ClientTrace{
			WroteRequest: func(httptrace.WroteRequestInfo) { t.Stop() },
		})
	}
	return fb
}

// stop stops the timer; false when it had already fired (or stopped
// before: a non-streamed request's, once written, which the caller tells
// apart by the attempt's cancel cause).
func (fb *firstByte) stop() bool {
	if fb.timer == nil {
		return true
	}
	return fb.timer.Stop()
}
