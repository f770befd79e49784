package keystore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/droverhq/drover/pkg/apikey"
)

// Errors of the changes, besides NATS being unreachable.
var (
	ErrExists   = errors.New("key exists")
	ErrNotFound = errors.New("no such key")
	// ErrConflict means the key changed between reading and writing it
	// (another admin, another replica): nothing was written.
	ErrConflict = errors.New("key changed meanwhile")
)

// opTimeout bounds each change's round trips to NATS.
const opTimeout = 5 * time.Second

// seenWait bounds how long a change waits for this replica's own watch to
// apply it before answering.
const seenWait = 2 * time.Second

// Create stores a new key with the digest of secret. It fails with
// ErrExists if the id is in the bucket (a revoked id may be used again).
func (s *Store) Create(ctx context.Context, rec apikey.Record, secret string) (apikey.Record, error) {
	ctx, cancel := context.WithTimeout(ctx, opTimeout)
	defer cancel()
	kv, err := s.bucket(ctx)
	if err != nil {
		return apikey.Record{}, err
	}
	now := time.Now().UTC()
	rec.Digest, rec.Created, rec.Updated, rec.Source = apikey.Digest(secret), now, now, ""
	if err := rec.Validate(); err != nil {
		return apikey.Record{}, err
	}
	raw, err := json.Marshal(rec)
	if err != nil {
		return apikey.Record{}, err
	}
	rev, err := kv.Create(ctx, rec.ID, raw)
	if errors.Is(err, jetstream.ErrKeyExists) {
		return apikey.Record{}, ErrExists
	}
	if err != nil {
		return apikey.Record{}, fmt.Errorf("storing key %s: %w", rec.ID, err)
	}
	s.settle(ctx, rev)
	rec.Source = "bucket"
	return rec, nil
}

// Change applies change to the stored record of id and writes it back if
// nobody wrote it meanwhile (ErrConflict otherwise).
func (s *Store) Change(ctx context.Context, id string, change func(*apikey.Record) error) (apikey.Record, error) {
	ctx, cancel := context.WithTimeout(ctx, opTimeout)
	defer cancel()
	kv, err := s.bucket(ctx)
	if err != nil {
		return apikey.Record{}, err
	}
	rec, rev, err := s.current(ctx, kv, id)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return apikey.Record{}, ErrNotFound
	}
	if err != nil {
		return apikey.Record{}, fmt.Errorf("reading key %s: %w", id, err)
	}
	if err := change(&rec); err != nil {
		return apikey.Record{}, err
	}
	rec.ID, rec.Source, rec.Updated = id, "", time.Now().UTC()
	if err := rec.Validate(); err != nil {
		return apikey.Record{}, err
	}
	raw, err := json.Marshal(rec)
	if err != nil {
		return apikey.Record{}, err
	}
	newRev, err := kv.Update(ctx, id, raw, rev)
	if errors.Is(err, jetstream.ErrKeyRevisionMismatch) || errors.Is(err, jetstream.ErrKeyExists) {
		return apikey.Record{}, ErrConflict
	}
	if err != nil {
		return apikey.Record{}, fmt.Errorf("storing key %s: %w", id, err)
	}
	s.settle(ctx, newRev)
	rec.Source = "bucket"
	return rec, nil
}

// Revoke deletes id from the bucket; every replica drops it as its watch
// sees the delete marker.
func (s *Store) Revoke(ctx context.Context, id string) error {
	ctx, cancel := context.WithTimeout(ctx, opTimeout)
	defer cancel()
	kv, err := s.bucket(ctx)
	if err != nil {
		return err
	}
	_, rev, err := s.current(ctx, kv, id)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return ErrNotFound
	}
	if err != nil {
		return fmt.Errorf("reading key %s: %w", id, err)
	}
	err = kv.Delete(ctx, id, jetstream.LastRevision(rev))
	if errors.Is(err, jetstream.ErrKeyRevisionMismatch) || errors.Is(err, jetstream.ErrKeyExists) {
		return ErrConflict
	}
	if err != nil {
		return fmt.Errorf("deleting key %s: %w", id, err)
	}
	// The delete marker is the next revision at least: wait for a revision
	// beyond the one deleted.
	s.settle(ctx, rev+1)
	return nil
}

// settle waits, briefly, until this replica's watch has applied rev.
func (s *Store) settle(ctx context.Context, rev uint64) {
	ctx, cancel := context.WithTimeout(ctx, seenWait)
	defer cancel()
	s.waitSeen(ctx, rev)
}
