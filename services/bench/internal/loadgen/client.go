// Package loadgen sends a workload at one HTTP target, either from a fixed
// number of connections as fast as they go (closed loop) or at a fixed rate
// regardless of how fast responses come back (open loop), and records the
// latency of every request and why each failure failed.
package loadgen

import (
	"bytes"
	"context"
	"fmt"
	"io"

	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/droverhq/drover/services/bench/internal/keepalive"
	"github.com/droverhq/drover/services/bench/internal/workload"
)

// NewClient returns a client over a keep-alive transport (package
// keepalive) with the given timeout per request.
func NewClient(timeout time.Duration) *http.Client {
	return &http.Client{Transport: keepalive.Transport(), Timeout: timeout}
}

// bufPool holds response buffers; a streamed 20-chunk reply is a few KB.
var bufPool = sync.Pool{New: func() any { return bytes.NewBuffer(make([]byte, 0, 8<<10)) }}

// sender issues one workload request against one URL.
type sender struct {
	client *http.Client
	url    string
	w      workload.Workload
}

func newSender(client *http.Client, baseURL string, w workload.Workload) *sender {
	return &sender{client: client, url: strings.TrimRight(baseURL, "/") + w.Path, w: w}
}

// do sends one request and reads the whole response. It returns "" on
// success or a short, low-cardinality description of the failure.
func (s *sender) do(ctx context.Context) string {
	req, err := http.NewRequestWithContext(ctx, s.w.Method, s.url, bytes.NewReader(s.w.Body))
	if err != nil {
		return "build request: " + err.Error()
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := s.client.Do(req)
	if err != nil {
		return "transport: " + errKind(err)
	}
	buf := bufPool.Get().(*bytes.Buffer)
	buf.Reset()
	defer bufPool.Put(buf)
	_, rerr := buf.ReadFrom(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Sprintf("status %d", resp.StatusCode)
	}
	if rerr != nil {
		return "read body: " + errKind(rerr)
	}
	if err := s.w.Validate(buf.Bytes()); err != nil {
		return "invalid: " + err.Error()
	}
	return ""
}

// errKind shortens an error so that failures group by cause, not by
// connection address.
func errKind(err error) string {
	msg := err.Error()
	switch {
	case strings.Contains(msg, "connection refused"):
		return "connection refused"
	case strings.Contains(msg, "connection reset"):
		return "connection reset"
	case strings.Contains(msg, "use of closed network connection"):
		return "use of closed network connection"
	case strings.Contains(msg, "Client.Timeout"), strings.Contains(msg, "deadline exceeded"):
		return "timeout"
	case strings.Contains(msg, "context canceled"):
		return "canceled"
	case err == io.ErrUnexpectedEOF || strings.Contains(msg, "unexpected EOF"):
		return "unexpected EOF"
	case strings.Contains(msg, "EOF"):
		return "EOF"
	}
	if len(msg) > 80 {
		msg = msg[:80]
	}
	return msg
}
