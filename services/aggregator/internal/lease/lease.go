// Package lease keeps per-partition leases in a JetStream key-value bucket.
// A lease is a key partition.<p> whose value names its holder; the bucket's
// TTL expires it unless the holder renews it. Create and revision-checked
// Update make acquiring and renewing atomic, so at most one instance holds a
// partition at any moment the NATS server sees.
//
// Holders also keep a heartbeat key instance.<id>, so that everyone can count
// the live instances and take a fair share of the partitions.
package lease

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// Table is one instance's view of the lease bucket.
type Table struct {
	kv jetstream.KeyValue
	id string
}

// Open creates or updates the bucket with the given TTL, kept on replicas
// NATS cluster nodes (nats.replicas; 0 means 1), and returns the table for
// instance id.
func Open(ctx context.Context, js jetstream.JetStream, bucket, id string, ttl time.Duration, replicas int) (*Table, error) {
	if id == "" || strings.ContainsAny(id, " \t\r\n") {
		return nil, fmt.Errorf("lease: instance id %q must be non-empty without spaces", id)
	}
	kv, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket:      bucket,
		Description: "drover-aggregator partition leases",
		TTL:         ttl,
		History:     1,
		Storage:     jetstream.FileStorage,
		Replicas:    replicas,
	})
	if err != nil {
		return nil, fmt.Errorf("opening lease bucket %s with %d replicas (nats.replicas): %w", bucket, max(replicas, 1), err)
	}
	return &Table{kv: kv, id: id}, nil
}

// ID is this instance's id.
func (t *Table) ID() string { return t.id }

func partitionKey(p int) string { return "partition." + strconv.Itoa(p) }

func instanceKey(id string) string { return "instance." + sanitize(id) }

// sanitize keeps an id usable as a key token.
func sanitize(id string) string {
	return strings.Map(func(r rune) rune {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '-', r == '_':
			return r
		}
		return '_'
	}, id)
}

// Heartbeat marks this instance alive for one TTL.
func (t *Table) Heartbeat(ctx context.Context) error {
	if _, err := t.kv.PutString(ctx, instanceKey(t.id), t.id); err != nil {
		return fmt.Errorf("lease heartbeat: %w", err)
	}
	return nil
}

// Leave removes this instance's heartbeat, so others rebalance at once.
func (t *Table) Leave(ctx context.Context) error {
	if err := t.kv.Delete(ctx, instanceKey(t.id)); err != nil {
		return fmt.Errorf("lease leave: %w", err)
	}
	return nil
}

// Instances counts live instances (those whose heartbeat has not expired).
func (t *Table) Instances(ctx context.Context) (int, error) {
	lister, err := t.kv.ListKeysFiltered(ctx, "instance.*")
	if err != nil {
		if errors.Is(err, jetstream.ErrNoKeysFound) {
			return 0, nil
		}
		return 0, fmt.Errorf("listing instances: %w", err)
	}
	n := 0
	for range lister.Keys() {
		n++
	}
	return n, nil
}

// ErrHeld means another instance holds the lease.
var ErrHeld = errors.New("lease held by another instance")

// Acquire takes partition p if nobody holds it and returns the lease's
// revision, which Renew and Release need.
func (t *Table) Acquire(ctx context.Context, p int) (uint64, error) {
	rev, err := t.kv.Create(ctx, partitionKey(p), []byte(t.id))
	if err != nil {
		if errors.Is(err, jetstream.ErrKeyExists) {
			return 0, ErrHeld
		}
		return 0, fmt.Errorf("acquiring partition %d: %w", p, err)
	}
	return rev, nil
}

// Renew extends the lease held at revision rev and returns the new revision.
// An error wrapping ErrHeld means the lease was lost (it expired and someone
// else took it, or it was deleted): the caller must stop writing p at once.
func (t *Table) Renew(ctx context.Context, p int, rev uint64) (uint64, error) {
	next, err := t.kv.Update(ctx, partitionKey(p), []byte(t.id), rev)
	if err != nil {
		if errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
			return 0, fmt.Errorf("renewing partition %d: %w", p, ErrHeld)
		}
		return 0, fmt.Errorf("renewing partition %d: %w", p, err)
	}
	return next, nil
}

// Release gives p up, if it is still held at rev.
func (t *Table) Release(ctx context.Context, p int, rev uint64) error {
	if err := t.kv.Delete(ctx, partitionKey(p), jetstream.LastRevision(rev)); err != nil {
		return fmt.Errorf("releasing partition %d: %w", p, err)
	}
	return nil
}

// Holder returns who holds p ("" if nobody).
func (t *Table) Holder(ctx context.Context, p int) (string, error) {
	e, err := t.kv.Get(ctx, partitionKey(p))
	if err != nil {
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			return "", nil
		}
		return "", fmt.Errorf("reading lease of partition %d: %w", p, err)
	}
	return string(e.Value()), nil
}

// FairShare is how many of partitions one of instances should hold: the
// ceiling, so that the shares always cover every partition.
func FairShare(partitions, instances int) int {
	if instances < 1 {
		instances = 1
	}
	return (partitions + instances - 1) / instances
}
