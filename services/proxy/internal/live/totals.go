package live

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/droverhq/drover/pkg/chstore"
	"github.com/droverhq/drover/pkg/config"
	"github.com/droverhq/drover/pkg/usage"
)

// tokenKey names one group of token totals.
type tokenKey struct{ Endpoint, Model, APIKey string }

// fleetTotals are the whole fleet's token totals, exact: ClickHouse's sums
// at a known point of the usage stream (the committed sequence of every
// partition), plus every event of the stream after that point, followed
// with an ordered consumer. An event is counted from the stream only if its
// sequence is above its partition's committed one, so nothing the
// aggregator already stored is counted twice, and nothing published since
// is missed.
//
// Until the first baseline is read and the consumer has caught up with the
// stream's tail as it was then, the totals are not ready and the snapshot
// falls back to this replica's own totals.
type fleetTotals struct {
	store      *chstore.Store
	nc         *nats.Conn
	stream     string
	partitions int
	log        *slog.Logger

	mu        sync.Mutex // guards the fields below
	counts    map[tokenKey]*usage.Count
	committed map[int]uint64
	ready     bool      // counts are complete up to seq
	seq       uint64    // last stream sequence applied
	since     time.Time // when the ClickHouse baseline was read
	reason    string    // why the totals are not (or no longer) current
}

const (
	// minCommittedPartitions is the fewest partitions whose committed
	// sequences are read, so that a proxy configured with fewer partitions
	// than the aggregator still skips what is stored (absent partitions
	// read as 0).
	minCommittedPartitions = 64
	// baselineAttempts bounds reading a consistent ClickHouse baseline
	// while the aggregator keeps committing.
	baselineAttempts = 20
	// insertSettle is how long a baseline read waits between reading the
	// committed sequences and reading them again, for an insert caught
	// between its two views to finish.
	insertSettle = 100 * time.Millisecond
	// followRetryMin and followRetryMax bound the backoff between attempts
	// to follow the usage stream.
	followRetryMin = 500 * time.Millisecond
	followRetryMax = 30 * time.Second
)

// committedPartitions is the partitions whose committed sequences are read:
// at least minCommittedPartitions.
func (f *fleetTotals) committedPartitions() []int {
	n := max(f.partitions, minCommittedPartitions)
	out := make([]int, n)
	for i := range out {
		out[i] = i
	}
	return out
}

// run keeps the totals current until ctx ends, starting over (a fresh
// baseline) after any failure.
func (f *fleetTotals) run(ctx context.Context) {
	wait := followRetryMin
	for ctx.Err() == nil {
		err := f.follow(ctx)
		if ctx.Err() != nil {
			return
		}
		f.mu.Lock()
		f.reason = err.Error()
		f.mu.Unlock()
		f.log.Warn("fleet token totals: following the usage stream failed; retrying", "err", err, "in", wait)
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
		wait = min(2*wait, followRetryMax)
	}
}

// baseline reads ClickHouse's totals and the committed sequences they
// include. Within one insert the rollup is written before the progress
// row, so the committed sequence is read before and after the sums (with a
// pause, insertSettle); when it moved, the read is repeated.
func (f *fleetTotals) baseline(ctx context.Context) (map[tokenKey]*usage.Count, map[int]uint64, error) {
	parts := f.committedPartitions()
	for attempt := 0; ; attempt++ {
		before, err := f.store.Committed(ctx, parts)
		if err != nil {
			return nil, nil, err
		}
		rows, err := f.store.Usage(ctx, chstore.UsageQuery{GroupBy: []chstore.Dimension{chstore.ByEndpoint, chstore.ByModel, chstore.ByAPIKey}})
		if err != nil {
			return nil, nil, err
		}
		select {
		case <-ctx.Done():
			return nil, nil, ctx.Err()
		case <-time.After(insertSettle):
		}
		after, err := f.store.Committed(ctx, parts)
		if err != nil {
			return nil, nil, err
		}
		if maps.Equal(before, after) {
			counts := make(map[tokenKey]*usage.Count, len(rows))
			for _, r := range rows {
				counts[tokenKey{r.Endpoint, r.Model, r.APIKey}] = &usage.Count{
					Requests: int64(r.Requests), Errors: int64(r.Errors),
					InputTokens: int64(r.InputTokens), OutputTokens: int64(r.OutputTokens),
					UnknownTokens: int64(r.TokensUnknown),
				}
			}
			return counts, after, nil
		}
		if attempt == baselineAttempts {
			return nil, nil, errors.New("clickhouse totals kept moving while being read")
		}
	}
}

// follow reads a baseline and applies the stream after it until the
// stream fails or ctx ends.
func (f *fleetTotals) follow(ctx context.Context) error {
	js, err := jetstream.New(f.nc)
	if err != nil {
		return fmt.Errorf("opening jetstream: %w", err)
	}
	stream, err := js.Stream(ctx, f.stream)
	if err != nil {
		return fmt.Errorf("looking up stream %s: %w", f.stream, err)
	}
	counts, committed, err := f.baseline(ctx)
	if err != nil {
		return fmt.Errorf("reading totals from clickhouse: %w", err)
	}
	info, err := stream.Info(ctx)
	if err != nil {
		return fmt.Errorf("reading stream %s: %w", f.stream, err)
	}
	target := info.State.LastSeq // caught up once this is applied
	start := uint64(0)
	for i, p := range f.committedPartitions() {
		if i == 0 || committed[p] < start {
			start = committed[p]
		}
	}
	start++
	cfg := jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{config.UsageSubjectPrefix + ">"},
		DeliverPolicy:  jetstream.DeliverByStartSequencePolicy,
		OptStartSeq:    start,
	}
	cons, err := js.OrderedConsumer(ctx, f.stream, cfg)
	if err != nil {
		return fmt.Errorf("creating ordered consumer on %s: %w", f.stream, err)
	}
	it, err := cons.Messages()
	if err != nil {
		return fmt.Errorf("consuming %s: %w", f.stream, err)
	}
	defer it.Stop()
	stop := context.AfterFunc(ctx, it.Stop)
	defer stop()

	f.mu.Lock()
	// Keep serving the previous totals (if any) until the new ones are
	// caught up.
	prevReady := f.ready
	prev := f.counts
	f.counts, f.committed, f.seq, f.since = counts, committed, start-1, time.Now().UTC()
	f.ready = target < start
	if !f.ready && prevReady {
		f.counts, f.ready = prev, true
		f.reason = "catching up with the usage stream"
	}
	if f.ready {
		f.reason = ""
	}
	f.mu.Unlock()
	pending := counts // applied privately until caught up, when prevReady

	for {
		msg, err := it.Next()
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return fmt.Errorf("reading %s: %w", f.stream, err)
		}
		md, err := msg.Metadata()
		if err != nil {
			continue
		}
		seq := md.Sequence.Stream
		p, perr := strconv.Atoi(strings.TrimPrefix(msg.Subject(), config.UsageSubjectPrefix))
		ev, derr := decode(msg.Data())
		f.mu.Lock()
		if perr == nil && derr == nil && seq > committed[p] {
			add(pending, ev)
		}
		f.seq = seq
		if !f.ready || f.reason != "" {
			if seq >= target || md.NumPending == 0 {
				f.counts, f.ready, f.reason = pending, true, ""
			}
		}
		f.mu.Unlock()
	}
}

// view copies the totals; ok is false when they are not ready.
func (f *fleetTotals) view() (counts map[tokenKey]usage.Count, src TokenSource, ok bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.ready {
		reason := f.reason
		if reason == "" {
			reason = "reading totals from clickhouse"
		}
		return nil, TokenSource{Mode: ModeLocal, Reason: "fleet totals not ready: " + reason}, false
	}
	counts = make(map[tokenKey]usage.Count, len(f.counts))
	for k, c := range f.counts {
		counts[k] = *c
	}
	return counts, TokenSource{Mode: ModeFleet, Reason: f.reason, ClickHouseAt: f.since, StreamSeq: f.seq}, true
}

func add(m map[tokenKey]*usage.Count, ev usage.Event) {
	k := tokenKey{ev.Endpoint, ev.Model, ev.APIKey}
	c := m[k]
	if c == nil {
		c = &usage.Count{}
		m[k] = c
	}
	c.Add(ev.Count())
}

// decode accepts what the aggregator stores and rejects what it
// dead-letters (usage.Validate), so that the stream adds exactly what
// ClickHouse will hold.
func decode(data []byte) (usage.Event, error) {
	var ev usage.Event
	if err := json.Unmarshal(data, &ev); err != nil {
		return ev, err
	}
	return ev, usage.Validate(ev)
}
