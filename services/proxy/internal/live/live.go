// Package live serves the fleet's live usage: /api/usage (one snapshot) and
// /api/usage-stream (Server-Sent Events, one snapshot per change).
//
// A snapshot holds in-flight requests per endpoint and model across every
// replica (this replica's exact counts plus the others' latest, shared by
// fleetsync) and token totals: the fleet's (ClickHouse plus the usage
// stream since) when both ClickHouse and NATS are configured, otherwise
// this replica's own, and the snapshot says which and why.
//
// Usage is private: a client key sees its own totals only, and none of the
// in-flight counts (every key's requests); an admin sees everything. Each
// stream is published the snapshots of its own scope, so a client's stream
// does not even tick when another key's usage changes.
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
	"github.com/droverhq/drover/services/proxy/internal/auth"
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
	// Store and Conn give fleet-wide totals: ClickHouse's plus the usage
	// stream (JetStream stream Stream, Partitions partitions) since, as
	// republished on usage.live.>. With either nil, or until the fleet's
	// are ready, the totals are this replica's (Record).
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

	// tune adjusts the fleet totals' limits before they start (tests).
	tune func(*fleetTotals)
}

// Live builds and publishes snapshots. Create it with New; Close stops it
// and ends every stream.
type Live struct {
	opts  Options
	hub   *hub
	fleet *fleetTotals // nil when totals are local only
	local string       // why totals are local, when fleet is nil

	localMu     sync.Mutex // guards localCounts
	localCounts map[tokenKey]*usage.Count

	build sync.Mutex // serialises build-and-publish (so seq order is publish order); guards views and seqs
	views map[scope]*published
	seqs  map[scope]uint64 // the last Seq published to each scope (kept when its streams end)

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
	l := &Live{opts: opts, hub: newHub(), localCounts: map[tokenKey]*usage.Count{},
		views: map[scope]*published{}, seqs: map[scope]uint64{}, done: make(chan struct{})}
	ctx, cancel := context.WithCancel(context.Background())
	l.cancel = cancel
	switch {
	case opts.Store == nil:
		l.local = "clickhouse.addr is not set: token totals are this replica's since it started"
	case opts.Conn == nil:
		l.local = "nats.url is not set: token totals are this replica's since it started"
	default:
		l.fleet = &fleetTotals{sums: tokenSums{}, store: opts.Store, nc: opts.Conn, stream: opts.Stream, partitions: opts.Partitions, log: opts.Log}
		if opts.tune != nil {
			opts.tune(l.fleet)
		}
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

// Record keeps this replica's totals per endpoint, model and client key
// (usage.Sink), shown when the fleet's totals are not available. It never
// blocks.
func (l *Live) Record(ev usage.Event) {
	if ev.Endpoint == "" {
		return // never reached a backend
	}
	l.localMu.Lock()
	add(l.localCounts, ev)
	l.localMu.Unlock()
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
			// Under the lock: a newer seq never carries older state, and a
			// scope subscribed meanwhile is not taken for one that ended.
			scopes := l.hub.scopes()
			st := l.state()
			listened := make(map[scope]bool, len(scopes))
			for _, sc := range scopes {
				listened[sc] = true
				l.publishLocked(sc, st, false)
			}
			for sc := range l.views {
				if !listened[sc] {
					delete(l.views, sc) // its streams ended
				}
			}
			l.build.Unlock()
		}
	}
}

// published is the last snapshot published to a scope.
type published struct {
	snap    *Snapshot
	builtAt time.Time
}

// publishLocked builds sc's snapshot of st and publishes it if it differs
// from sc's last one (or force). Call with l.build held.
func (l *Live) publishLocked(sc scope, st state, force bool) {
	snap := st.snapshot(sc, l.opts.Replica)
	last := l.views[sc]
	if last == nil {
		last = &published{}
		l.views[sc] = last
	}
	last.builtAt = time.Now()
	if !force && sameContent(last.snap, snap) {
		return
	}
	l.seqs[sc]++
	snap.Seq = l.seqs[sc]
	b, err := json.Marshal(snap)
	if err != nil {
		l.opts.Log.Error("encoding usage snapshot", "err", err)
		return
	}
	last.snap = snap
	l.hub.publish(sc, b)
}

// subscribe registers a stream of sc whose mailbox holds a current
// snapshot.
func (l *Live) subscribe(sc scope) *sub {
	l.build.Lock()
	defer l.build.Unlock()
	s, fresh := l.hub.subscribe(sc)
	if last := l.views[sc]; !fresh || last == nil || time.Since(last.builtAt) > 2*l.opts.Interval {
		l.publishLocked(sc, l.state(), true)
	}
	return s
}

// ServeUsage is GET /api/usage: one snapshot of what the caller may see
// (auth.FromContext).
func (l *Live) ServeUsage(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	json.NewEncoder(w).Encode(l.SnapshotFor(auth.FromContext(r.Context()))) //nolint:errcheck // the client may be gone
}

// ServeStream is GET /api/usage-stream: Server-Sent Events, one "data:"
// line of Snapshot JSON per change of what the caller may see
// (auth.FromContext). Browsers' EventSource cannot send headers, so the
// auth middleware accepts ?api_key= as well.
func (l *Live) ServeStream(w http.ResponseWriter, r *http.Request) {
	rc := http.NewResponseController(w)
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Accel-Buffering", "no") // nginx: do not buffer the stream
	w.WriteHeader(http.StatusOK)

	s := l.subscribe(scopeOf(auth.FromContext(r.Context())))
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
