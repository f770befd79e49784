// Package keystore keeps the run-time API keys of the fleet in a JetStream
// key-value bucket: one apikey.Record (JSON, SHA-256 digest only, never the
// secret) per key id. Every replica watches the bucket and hands the whole
// current set to its authenticator on every change, so a key created,
// changed or revoked on one replica is in force on all of them within
// milliseconds. The last set seen is saved to a state file, so a replica
// that starts while NATS is down serves with the keys it last knew, and a
// replica that loses NATS keeps its set until NATS is back.
package keystore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/droverhq/drover/pkg/apikey"
	"github.com/droverhq/drover/pkg/config"
)

// Options configure a Store.
type Options struct {
	// Conn is the NATS connection; nil means no bucket (config keys only,
	// and the API refuses changes).
	Conn *nats.Conn
	// Bucket is the key-value bucket (created if missing).
	Bucket string
	// Replicas is how many NATS cluster nodes keep a copy of the bucket
	// (nats.replicas; 0 means 1).
	Replicas int
	// StateFile keeps the last set seen; "" keeps none.
	StateFile string
	// OnChange receives the whole current set of bucket keys (valid
	// records only) after the first full read and after every change; also
	// once at Open with the saved set, if there is one. Calls never overlap.
	OnChange func([]apikey.Record)
	Log      *slog.Logger
	// Retry is the wait between attempts to reach the bucket (default 1s).
	Retry time.Duration
	// FirstRead is how long Open waits for the bucket's first full read
	// when NATS is connected, so that a replica does not start serving
	// without the fleet's keys (default 3s; a slower bucket is read in
	// the background).
	FirstRead time.Duration
}

// ErrNoNATS is returned by changes when the store has no NATS connection.
var ErrNoNATS = errors.New("key management needs NATS (nats.url)")

// Store is one replica's view of the key bucket, and its way to change it.
type Store struct {
	opts Options
	log  *slog.Logger
	js   jetstream.JetStream

	cancel context.CancelFunc
	done   chan struct{}

	// mu guards recs, seen, synced, reads, kv and advanced.
	mu     sync.Mutex
	recs   map[string]entry // the current set, by id
	seen   uint64           // highest bucket revision applied
	synced bool             // whether recs came from the bucket (not only the state file)
	reads  uint64           // full reads of the bucket so far
	kv     jetstream.KeyValue
	// advanced is closed (and replaced) whenever the set is replaced from
	// the bucket, waking WaitSynced and waitSeen.
	advanced chan struct{}
}

type entry struct {
	rec apikey.Record
	rev uint64
}

// Open starts watching the bucket in the background. With a state file,
// the saved set is in force before Open returns; with NATS connected, Open
// returns once the bucket has been read (or after FirstRead). Close stops
// the watch.
func Open(o Options) *Store {
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	if o.Retry <= 0 {
		o.Retry = time.Second
	}
	if o.FirstRead <= 0 {
		o.FirstRead = 3 * time.Second
	}
	s := &Store{opts: o, log: o.Log, recs: map[string]entry{}, advanced: make(chan struct{}), done: make(chan struct{})}
	if o.Conn == nil {
		close(s.done)
		return s
	}
	s.js, _ = jetstream.New(o.Conn) // fails only on bad options
	s.loadState()
	ctx, cancel := context.WithCancel(context.Background())
	s.cancel = cancel
	go s.run(ctx)
	if o.Conn.IsConnected() {
		wctx, wcancel := context.WithTimeout(ctx, o.FirstRead)
		defer wcancel()
		if !s.WaitSynced(wctx) {
			s.log.Warn("key bucket not read yet: serving with the saved key set (if any) until it is", "bucket", o.Bucket, "waited", o.FirstRead.String())
		}
	}
	return s
}

// FromConfig returns the config file's keys as records (no digest), for
// listing next to the bucket's.
func FromConfig(keys []config.APIKey) []apikey.Record {
	out := make([]apikey.Record, 0, len(keys))
	for _, k := range keys {
		out = append(out, apikey.Record{ID: k.ID, Role: k.Role, Models: k.Models, Limits: k.Limits, ModelLimits: k.ModelLimits,
			Weight: k.Weight, Class: k.Class, Source: "config"})
	}
	return out
}

// Close stops the watch and waits for it to end.
func (s *Store) Close() {
	if s.cancel != nil {
		s.cancel()
	}
	<-s.done
}

// Enabled reports whether the store has a bucket to manage.
func (s *Store) Enabled() bool { return s.opts.Conn != nil }

// WaitSynced waits until the set has been read from the bucket at least
// once, or ctx ends; it reports whether it was.
func (s *Store) WaitSynced(ctx context.Context) bool {
	for {
		s.mu.Lock()
		synced, ch := s.synced, s.advanced
		s.mu.Unlock()
		if synced {
			return true
		}
		select {
		case <-ctx.Done():
			return false
		case <-ch:
		}
	}
}

// Records returns the current set, sorted by id.
func (s *Store) Records() []apikey.Record {
	s.mu.Lock()
	defer s.mu.Unlock()
	return sorted(s.recs)
}

func sorted(m map[string]entry) []apikey.Record {
	out := make([]apikey.Record, 0, len(m))
	for _, e := range m {
		out = append(out, e.rec)
	}
	slices.SortFunc(out, func(a, b apikey.Record) int { return strings.Compare(a.ID, b.ID) })
	return out
}

// run keeps a watch on the bucket: it opens (or creates) the bucket and
// watches it, and starts over after a failure or a reconnection, keeping
// the last set meanwhile.
func (s *Store) run(ctx context.Context) {
	defer close(s.done)
	// A reconnection restarts the watch, so that the set catches up at once
	// instead of when the ordered consumer notices it lost its server.
	reconnected := s.opts.Conn.StatusChanged(nats.CONNECTED)
	defer s.opts.Conn.RemoveStatusListener(reconnected)
	// The first failure after a read is a warning; retries that fail the
	// same way are logged at debug level, so an outage is one line.
	warned := uint64(0)
	for {
		err := s.watch(ctx, reconnected)
		if ctx.Err() != nil {
			return
		}
		if err == nil { // reconnected: read the bucket again now
			continue
		}
		s.mu.Lock()
		s.kv = nil // open (or create) the bucket again next time
		reads := s.reads
		s.mu.Unlock()
		level := slog.LevelDebug
		if warned == 0 || reads != warned-1 {
			level, warned = slog.LevelWarn, reads+1
		}
		s.log.Log(ctx, level, "key bucket unreachable: serving the last key set seen and retrying", "bucket", s.opts.Bucket, "keys", len(s.Records()), "err", err, "retry_in", s.opts.Retry.String())
		select {
		case <-ctx.Done():
			return
		case <-reconnected:
		case <-time.After(s.opts.Retry):
		}
	}
}

// bucket opens the bucket, creating it if missing.
func (s *Store) bucket(ctx context.Context) (jetstream.KeyValue, error) {
	if s.js == nil {
		return nil, ErrNoNATS
	}
	// Requests on a connection that is not up wait for it; say at once
	// that NATS is away instead.
	if !s.opts.Conn.IsConnected() {
		return nil, fmt.Errorf("NATS is not connected (%s)", s.opts.Conn.Status())
	}
	s.mu.Lock()
	kv := s.kv
	s.mu.Unlock()
	if kv != nil {
		return kv, nil
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	// History 1: only the current record of each key matters; a revoked
	// key's delete marker replaces it. No TTL: keys live until revoked.
	kv, err := s.js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket: s.opts.Bucket, History: 1, Replicas: s.opts.Replicas,
		Description: "Drover's run-time API keys: SHA-256 digests, never secrets",
	})
	if err != nil {
		return nil, fmt.Errorf("opening key bucket %s with %d replicas (nats.replicas): %w", s.opts.Bucket, max(s.opts.Replicas, 1), err)
	}
	s.mu.Lock()
	s.kv = kv
	s.mu.Unlock()
	return kv, nil
}

// watch follows the bucket until ctx ends, the watcher fails or the
// connection comes back after a loss (returns nil then).
func (s *Store) watch(ctx context.Context, reconnected <-chan nats.Status) error {
	kv, err := s.bucket(ctx)
	if err != nil {
		return err
	}
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	w, err := kv.WatchAll(wctx)
	if err != nil {
		return fmt.Errorf("watching key bucket %s: %w", s.opts.Bucket, err)
	}
	defer w.Stop() //nolint:errcheck // nothing to do about it
	fresh := map[string]entry{}
	var last uint64
	initial := true
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-reconnected:
			return nil
		case e, ok := <-w.Updates():
			if !ok {
				return fmt.Errorf("key bucket %s: watch ended", s.opts.Bucket)
			}
			if e == nil { // every current value delivered
				if initial {
					initial = false
					s.replace(fresh, last, true)
				}
				continue
			}
			last = max(last, e.Revision())
			s.apply(fresh, e)
			if !initial {
				s.replace(fresh, last, false)
			}
		}
	}
}

// apply records one bucket entry in set: a value that decodes and
// validates as the record of its key, or the removal of that key.
func (s *Store) apply(set map[string]entry, e jetstream.KeyValueEntry) {
	id := e.Key()
	if e.Operation() != jetstream.KeyValuePut {
		delete(set, id)
		return
	}
	var rec apikey.Record
	err := json.Unmarshal(e.Value(), &rec)
	if err == nil {
		err = rec.Validate()
	}
	if err == nil && rec.ID != id {
		err = fmt.Errorf("record names key %q", rec.ID)
	}
	if err != nil {
		delete(set, id)
		s.log.Warn("skipping an invalid entry of the key bucket", "bucket", s.opts.Bucket, "key", id, "revision", e.Revision(), "err", err)
		return
	}
	rec.Source = "bucket"
	set[id] = entry{rec: rec, rev: e.Revision()}
}

// replace makes set (copied) the current one, tells OnChange and saves it.
// Only the watch goroutine calls it, so OnChange calls never overlap.
func (s *Store) replace(set map[string]entry, rev uint64, first bool) {
	cp := make(map[string]entry, len(set))
	for k, v := range set {
		cp[k] = v
	}
	recs := sorted(cp)
	s.mu.Lock()
	s.recs = cp
	s.mu.Unlock()
	if s.opts.OnChange != nil {
		s.opts.OnChange(recs)
	}
	// Seen only once OnChange has the set: a change that waits for its
	// revision (waitSeen) then serves on this replica when it returns.
	s.mu.Lock()
	s.seen = max(s.seen, rev)
	s.synced = true
	if first {
		s.reads++
	}
	close(s.advanced)
	s.advanced = make(chan struct{})
	s.mu.Unlock()
	if first {
		s.log.Info("key bucket read", "bucket", s.opts.Bucket, "keys", len(recs))
	}
	if err := s.saveState(recs); err != nil {
		s.log.Error("saving the key set to the state file", "file", s.opts.StateFile, "err", err)
	}
}

// waitSeen waits until the watch has applied revision rev (so that this
// replica already enforces a change it just wrote), or ctx ends.
func (s *Store) waitSeen(ctx context.Context, rev uint64) {
	for {
		s.mu.Lock()
		seen, ch := s.seen, s.advanced
		s.mu.Unlock()
		if seen >= rev {
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-ch:
		}
	}
}

// current returns the record of id and its revision, read from the bucket.
func (s *Store) current(ctx context.Context, kv jetstream.KeyValue, id string) (apikey.Record, uint64, error) {
	e, err := kv.Get(ctx, id)
	if err != nil {
		return apikey.Record{}, 0, err
	}
	var rec apikey.Record
	if err := json.Unmarshal(e.Value(), &rec); err != nil {
		return apikey.Record{}, 0, fmt.Errorf("key %s: stored record is not JSON: %w", id, err)
	}
	return rec, e.Revision(), nil
}
