// Package live serves the fleet's live usage: /api/usage (one snapshot) and
// /api/usage-stream (Server-Sent Events, one snapshot per change).
//
// A snapshot holds in-flight requests per endpoint and model across every
// replica (this replica's exact counts plus the others' latest, shared by
// fleetsync) and token totals: the fleet's (ClickHouse plus the usage
// stream since) when both ClickHouse and NATS are configured, otherwise
// this replica's own, and the snapshot says which and why.
//
// Guarantees for the stream: a new subscriber gets the current snapshot at
// once; changes are coalesced to at most one snapshot per Interval (10 a
// second by default); an idle stream gets a comment every KeepAlive so
// proxies keep it open. Publishing never waits on a subscriber: each has a
// one-slot mailbox that the next snapshot overwrites, so a slow one gets
// the latest when it catches up, and a disconnected one is removed as soon
// as its request ends.
package live

import (
	"context"
	"encoding/json"
	"log/slog"
	"net/http"
	"sync"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/droverhq/drover/pkg/chstore"
	"github.com/droverhq/drover/pkg/config"
	"github.com/droverhq/drover/pkg/usage"
	"github.com/droverhq/drover/services/proxy/internal/fleetsync"
)

// Options are what Live reads. Local is required; the rest may be nil.
type Options struct {
	Replica string
	// Local is this replica's in-flight counts per endpoint and model
	// (Router.InFlight); Remote the other replicas' (Sync.Remote); Fleet
	// the sync's state; QueueLen the local waiting queue.
	Local    func() map[string]map[string]int
	Remote   func() map[string]map[string]int
	Fleet    func() fleetsync.Status
	QueueLen func() int
	// Totals is this replica's own token totals, shown when the fleet's
	// are not available.
	Totals *usage.Totals
	// Store and Conn give fleet-wide totals: ClickHouse's plus the usage
	// stream (JetStream stream Stream, Partitions partitions) since. With
	// either nil, the totals are this replica's.
	Store      *chstore.Store
	Conn       *nats.Conn
	Stream     string
	Partitions int
	// Interval is the least time between two published snapshots (default
	// 100ms); KeepAlive is how often an idle stream gets a comment
	// (default 15s); a write that blocks for twice KeepAlive drops the
	// subscriber.
	Interval  time.Duration
	KeepAlive time.Duration
	Log       *slog.Logger
}

// Live builds and publishes snapshots. Create it with New; Close stops it
// and ends every stream.
type Live struct {
	opts  Options
	hub   *hub
	fleet *fleetTotals // nil when totals are local only
	local string       // why totals are local, when fleet is nil

	keysMu sync.Mutex // guards keys
	keys   map[string]*usage.Count

	build   sync.Mutex // serialises build-and-publish (so seq order is publish order); guards last, seq, builtAt
	last    *Snapshot
	seq     uint64
	builtAt time.Time

	done      chan struct{} // closed by Close: streams end
	cancel    context.CancelFunc
	wg        sync.WaitGroup
	closeOnce sync.Once
}

// New starts publishing (and, with Store and Conn, following the fleet's
// token totals).
func New(opts Options) *Live {
	if opts.Interval <= 0 {
		opts.Interval = 100 * time.Millisecond
	}
	if opts.KeepAlive <= 0 {
		opts.KeepAlive = 15 * time.Second
	}
	if opts.Log == nil {
		opts.Log = slog.New(slog.DiscardHandler)
	}
	if opts.Stream == "" {
		opts.Stream = config.DefaultStream
	}
	l := &Live{opts: opts, hub: newHub(), keys: map[string]*usage.Count{}, done: make(chan struct{})}
	ctx, cancel := context.WithCancel(context.Background())
	l.cancel = cancel
	switch {
	case opts.Store == nil:
		l.local = "clickhouse.addr is not set: token totals are this replica's since it started"
	case opts.Conn == nil:
		l.local = "nats.url is not set: token totals are this replica's since it started"
	default:
		l.fleet = &fleetTotals{store: opts.Store, nc: opts.Conn, stream: opts.Stream, partitions: opts.Partitions, log: opts.Log}
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			l.fleet.run(ctx)
		}()
	}
	l.wg.Add(1)
	go l.loop(ctx)
	return l
}

// Close stops publishing and ends every open stream. It is safe to call
// more than once (for example from http.Server.RegisterOnShutdown, so that
// streams do not hold a graceful shutdown, and again from the server's
// Close).
func (l *Live) Close() {
	l.closeOnce.Do(func() {
		close(l.done)
		l.cancel()
		l.wg.Wait()
	})
}

// Record keeps this replica's totals per client key (usage.Sink), shown
// when the fleet's totals are not available. It never blocks.
func (l *Live) Record(ev usage.Event) {
	if ev.Endpoint == "" {
		return
	}
	l.keysMu.Lock()
	c := l.keys[ev.APIKey]
	if c == nil {
		c = &usage.Count{}
		l.keys[ev.APIKey] = c
	}
	c.Add(ev.Count())
	l.keysMu.Unlock()
}

// Subscribers is how many streams are open.
func (l *Live) Subscribers() int { return l.hub.len() }

func (l *Live) loop(ctx context.Context) {
	defer l.wg.Done()
	t := time.NewTicker(l.opts.Interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if l.hub.len() == 0 {
				continue // nobody listens: build on the next subscribe
			}
			l.build.Lock()
			l.publishLocked(false)
			l.build.Unlock()
		}
	}
}

// publishLocked builds a snapshot and publishes it if it differs from the
// last one (or force). Call with l.build held.
func (l *Live) publishLocked(force bool) {
	snap := l.Snapshot()
	l.builtAt = time.Now()
	if !force && sameContent(l.last, snap) {
		return
	}
	l.seq++
	snap.Seq = l.seq
	b, err := json.Marshal(snap)
	if err != nil {
		l.opts.Log.Error("encoding usage snapshot", "err", err)
		return
	}
	l.last = snap
	l.hub.publish(b)
}

// subscribe registers a stream whose mailbox holds a current snapshot.
func (l *Live) subscribe() *sub {
	l.build.Lock()
	defer l.build.Unlock()
	if l.last == nil || time.Since(l.builtAt) > 2*l.opts.Interval {
		l.publishLocked(true)
	}
	return l.hub.subscribe()
}

// ServeUsage is GET /api/usage: one snapshot.
func (l *Live) ServeUsage(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	json.NewEncoder(w).Encode(l.Snapshot()) //nolint:errcheck // the client may be gone
}

// ServeStream is GET /api/usage-stream: Server-Sent Events, one "data:"
// line of Snapshot JSON per change. Browsers' EventSource cannot send
// headers, so the auth middleware accepts ?api_key= as well.
func (l *Live) ServeStream(w http.ResponseWriter, r *http.Request) {
	rc := http.NewResponseController(w)
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Accel-Buffering", "no") // nginx: do not buffer the stream
	w.WriteHeader(http.StatusOK)

	s := l.subscribe()
	defer l.hub.unsubscribe(s)
	keep := time.NewTicker(l.opts.KeepAlive)
	defer keep.Stop()
	write := func(parts ...[]byte) bool {
		rc.SetWriteDeadline(time.Now().Add(2 * l.opts.KeepAlive)) //nolint:errcheck // not every writer has deadlines
		for _, p := range parts {
			if _, err := w.Write(p); err != nil {
				return false
			}
		}
		return rc.Flush() == nil
	}
	if !write([]byte("retry: 2000\n\n")) {
		return
	}
	for {
		select {
		case <-r.Context().Done():
			return
		case <-l.done:
			return
		case <-s.wake:
			if b := s.take(); b != nil && !write([]byte("data: "), b, []byte("\n\n")) {
				return
			}
		case <-keep.C:
			if !write([]byte(": keep-alive\n\n")) {
				return
			}
		}
	}
}
