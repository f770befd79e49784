package live

import (
	"context"
	"log/slog"
	"sync"

	"github.com/nats-io/nats.go"

	"github.com/droverhq/drover/pkg/chstore"
	"github.com/droverhq/drover/pkg/config"
	"github.com/droverhq/drover/pkg/usage"
)

// Sums is what a Follower keeps exact: ClickHouse's sums read at a
// committed point of every partition, then every usage event stored after
// it, each added once (the mechanism of the fleet token totals, described
// at fleetTotals). Live's token totals are one Sums; the limits ledger's
// day and month spend per key is another.
type Sums interface {
	// Read reads ClickHouse's sums into a new Tally. It runs between two
	// reads of the committed sequences, and again when they moved.
	Read(ctx context.Context, store *chstore.Store) (Tally, error)
	// Ready is called when a build's Tally becomes the current one: every
	// event stored before is in it, every later one is added as it
	// arrives. It runs under the follower's lock: it must not call back
	// into the Follower.
	Ready(t Tally)
}

// Tally is one build's sums. Add is called once per event stored after
// Read's committed point, from one goroutine at a time, under the
// follower's lock.
type Tally interface {
	Add(ev usage.Event)
}

// FollowerOptions are what a Follower reads: ClickHouse (Store) and the
// usage stream Stream with Partitions partitions, republished on
// usage.live.> over Conn. Both are required.
type FollowerOptions struct {
	Store      *chstore.Store
	Conn       *nats.Conn
	Stream     string
	Partitions int
	Log        *slog.Logger
}

// Follower keeps a Sums current until Close: builds it from ClickHouse and
// the stream, follows the stream, and builds it again after any gap, drop
// or reconnect (its last Tally stays current meanwhile).
type Follower struct {
	f      *fleetTotals
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// Follow starts following for sums.
func Follow(opts FollowerOptions, sums Sums) *Follower {
	if opts.Log == nil {
		opts.Log = slog.New(slog.DiscardHandler)
	}
	if opts.Stream == "" {
		opts.Stream = config.DefaultStream
	}
	ctx, cancel := context.WithCancel(context.Background())
	fl := &Follower{cancel: cancel, f: &fleetTotals{sums: sums, store: opts.Store, nc: opts.Conn, stream: opts.Stream, partitions: opts.Partitions, log: opts.Log}}
	fl.wg.Add(1)
	go func() {
		defer fl.wg.Done()
		fl.f.run(ctx)
	}()
	return fl
}

// State says whether a build was ready at some point (Sums.Ready was
// called) and why the sums are not, or no longer, current ("" when they
// are).
func (fl *Follower) State() (ready bool, reason string) {
	fl.f.mu.Lock()
	defer fl.f.mu.Unlock()
	if fl.f.shown == nil {
		return false, fl.f.notReady()
	}
	return true, fl.f.reason
}

// Close stops following and waits for it.
func (fl *Follower) Close() {
	fl.cancel()
	fl.wg.Wait()
}
