// Package lb is the small HTTP load balancer that the local stack (make run,
// the smoke test, the rolling-restart test) puts in front of several
// drover-proxy replicas on one machine, doing what nginx does in
// docker-compose.yml:
//
//   - round robin over the replicas;
//   - responses streamed through, flushed after every write, with no
//     timeout, so NDJSON and SSE generations arrive chunk by chunk;
//   - a request moves to the next replica when the chosen one refused the
//     connection (a stopping replica has closed its listener) or closed a
//     kept-alive connection before answering (a stopping replica closes its
//     idle connections). Only bodies up to MaxReplayBody are kept for that;
//     a larger body is streamed and not retried. A replica that refused a
//     connection is skipped for DownFor unless every replica is down.
//
// Nothing is retried once a response has started.
package lb

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/url"
	"strings"
	"sync/atomic"
	"time"
)

// Options tune a Balancer; zero values take the defaults.
type Options struct {
	// MaxReplayBody is the largest request body kept so that the request
	// can move to another replica (default 4 MiB).
	MaxReplayBody int64
	// DownFor is how long a replica that refused a connection is skipped
	// (default 1s).
	DownFor time.Duration
	// DialTimeout bounds connecting to a replica (default 2s).
	DialTimeout time.Duration
	Logger      *slog.Logger
}

// Balancer is an http.Handler. Its fields are set by New and only read
// afterwards, except each target's downUntil (atomic) and next (atomic).
type Balancer struct {
	targets   []*target
	next      atomic.Uint64
	transport *http.Transport
	opts      Options
	log       *slog.Logger
}

type target struct {
	url       *url.URL
	downUntil atomic.Int64 // unix nanoseconds
}

// New balances over the given replica base URLs (http://host:port).
func New(replicas []string, opts Options) (*Balancer, error) {
	if len(replicas) == 0 {
		return nil, errors.New("lb: no replicas")
	}
	if opts.MaxReplayBody <= 0 {
		opts.MaxReplayBody = 4 << 20
	}
	if opts.DownFor <= 0 {
		opts.DownFor = time.Second
	}
	if opts.DialTimeout <= 0 {
		opts.DialTimeout = 2 * time.Second
	}
	b := &Balancer{opts: opts, log: opts.Logger}
	if b.log == nil {
		b.log = slog.New(slog.DiscardHandler)
	}
	for _, r := range replicas {
		u, err := url.Parse(strings.TrimRight(r, "/"))
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return nil, fmt.Errorf("lb: replica %q: want http://host:port", r)
		}
		b.targets = append(b.targets, &target{url: u})
	}
	b.transport = &http.Transport{
		Proxy:               nil,
		DialContext:         (&net.Dialer{Timeout: opts.DialTimeout, KeepAlive: 30 * time.Second}).DialContext,
		MaxIdleConns:        1024,
		MaxIdleConnsPerHost: 256,
		IdleConnTimeout:     90 * time.Second,
		DisableCompression:  true, // pass Accept-Encoding and bodies through untouched
	}
	return b, nil
}

// Close drops idle connections to the replicas.
func (b *Balancer) Close() { b.transport.CloseIdleConnections() }

// order returns the replicas to try for one request: round robin from the
// next one, replicas marked down last.
func (b *Balancer) order() []*target {
	n := len(b.targets)
	start := int(b.next.Add(1) % uint64(n))
	now := time.Now().UnixNano()
	up := make([]*target, 0, n)
	var down []*target
	for i := range n {
		t := b.targets[(start+i)%n]
		if t.downUntil.Load() > now {
			down = append(down, t)
		} else {
			up = append(up, t)
		}
	}
	return append(up, down...)
}

func (b *Balancer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, replayable, err := readBody(r, b.opts.MaxReplayBody)
	if err != nil {
		writeError(w, http.StatusBadRequest, "reading request body: "+err.Error())
		return
	}
	var lastErr error
	for i, t := range b.order() {
		if i > 0 && !replayable {
			break
		}
		out, reused := b.outgoing(r, t, body)
		resp, err := b.transport.RoundTrip(out)
		if err == nil {
			b.relay(w, resp)
			return
		}
		if r.Context().Err() != nil {
			return // the client went away; nobody to answer
		}
		lastErr = err
		dial := isDialError(err)
		if dial {
			t.downUntil.Store(time.Now().Add(b.opts.DownFor).UnixNano())
		}
		if !dial && !*reused {
			break // the request may have reached the replica: do not send it twice
		}
		b.log.Debug("replica did not answer; trying the next", "replica", t.url.Host, "err", err)
	}
	b.log.Warn("no replica answered", "path", r.URL.Path, "err", lastErr)
	writeError(w, http.StatusBadGateway, fmt.Sprintf("no Drover replica answered: %v", lastErr))
}

// readBody keeps a body of up to max bytes in memory so that the request can
// be sent again; a larger one is returned as a stream that cannot.
func readBody(r *http.Request, max int64) (body func() io.ReadCloser, replayable bool, err error) {
	if r.Body == nil || r.Body == http.NoBody {
		return func() io.ReadCloser { return http.NoBody }, true, nil
	}
	buf, err := io.ReadAll(io.LimitReader(r.Body, max+1))
	if err != nil {
		return nil, false, err
	}
	if int64(len(buf)) <= max {
		return func() io.ReadCloser { return io.NopCloser(bytes.NewReader(buf)) }, true, nil
	}
	rest := io.MultiReader(bytes.NewReader(buf), r.Body)
	return func() io.ReadCloser { return io.NopCloser(rest) }, false, nil
}

// outgoing builds the request to one replica; *reused reports, after the
// round trip, whether it went over a kept-alive connection.
func (b *Balancer) outgoing(r *http.Request, t *target, body func() io.ReadCloser) (*http.Request, *bool) {
	reused := new(bool)
	trace := &httptrace.ClientTrace{GotConn: func(info httptrace.GotConnInfo) { *reused = info.Reused }}
	out := r.Clone(httptrace.WithClientTrace(r.Context(), trace))
	out.RequestURI = ""
	out.URL.Scheme, out.URL.Host = t.url.Scheme, t.url.Host
	out.Body = body()
	out.GetBody = func() (io.ReadCloser, error) { return body(), nil }
	if out.Body == http.NoBody {
		out.ContentLength = 0
	}
	removeHopHeaders(out.Header)
	if ip, _, err := net.SplitHostPort(r.RemoteAddr); err == nil {
		if prior := r.Header.Get("X-Forwarded-For"); prior != "" {
			ip = prior + ", " + ip
		}
		out.Header.Set("X-Forwarded-For", ip)
	}
	return out, reused
}

// relay copies the response, flushing after every read so that streams
// stream.
func (b *Balancer) relay(w http.ResponseWriter, resp *http.Response) {
	defer resp.Body.Close()
	removeHopHeaders(resp.Header)
	for k, vs := range resp.Header {
		w.Header()[k] = vs
	}
	w.WriteHeader(resp.StatusCode)
	rc := http.NewResponseController(w)
	_ = rc.Flush()
	buf := make([]byte, 32<<10)
	for {
		n, err := resp.Body.Read(buf)
		if n > 0 {
			if _, werr := w.Write(buf[:n]); werr != nil {
				return
			}
			_ = rc.Flush()
		}
		if err != nil {
			if !errors.Is(err, io.EOF) {
				// The replica cut the stream: cut the client's too, so it
				// sees an error rather than a clean, short reply.
				panic(http.ErrAbortHandler)
			}
			return
		}
	}
}

var hopHeaders = []string{"Connection", "Keep-Alive", "Proxy-Connection", "Proxy-Authenticate",
	"Proxy-Authorization", "Te", "Trailer", "Transfer-Encoding", "Upgrade"}

func removeHopHeaders(h http.Header) {
	for _, f := range strings.Split(h.Get("Connection"), ",") {
		if f = strings.TrimSpace(f); f != "" {
			h.Del(f)
		}
	}
	for _, k := range hopHeaders {
		h.Del(k)
	}
}

func isDialError(err error) bool {
	var op *net.OpError
	return errors.As(err, &op) && op.Op == "dial"
}

// writeError answers in Ollama's error shape, which every Drover client
// understands.
func writeError(w http.ResponseWriter, code int, msg string) {
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(map[string]string{"error": msg})
}

// Serve runs the balancer on ln until ctx ends, then stops accepting and
// waits up to grace for responses in progress.
func Serve(ctx context.Context, ln net.Listener, b *Balancer, grace time.Duration) error {
	srv := &http.Server{Handler: b, ReadHeaderTimeout: 10 * time.Second}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), grace)
	defer cancel()
	err := srv.Shutdown(sctx)
	b.Close()
	if errors.Is(err, context.DeadlineExceeded) {
		return srv.Close()
	}
	return err
}
