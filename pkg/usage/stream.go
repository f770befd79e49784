package usage

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/droverhq/drover/pkg/config"
)

// Subject is the partition subject for an event id. Events are spread over
// numbered partitions by their id so that each partition can have a single
// writer downstream.
func Subject(id string, partitions int) string {
	return PartitionSubject(Partition(id, partitions))
}

// Partition maps an event id to 0..partitions-1.
func Partition(id string, partitions int) int {
	if partitions <= 1 {
		return 0
	}
	// FNV-1a (hash/fnv's New32a), inline: every published event takes
	// this, and the hash.Hash32 allocated.
	h := uint32(fnvOffset32)
	for i := 0; i < len(id); i++ {
		h ^= uint32(id[i])
		h *= fnvPrime32
	}
	return int(h % uint32(partitions))
}

const (
	fnvOffset32 = 2166136261
	fnvPrime32  = 16777619
)

// PartitionSubject is "usage.v1.<p>" (config.UsageSubjectPrefix and p).
func PartitionSubject(p int) string { return config.UsageSubjectPrefix + strconv.Itoa(p) }

// StreamConfig describes the usage stream.
type StreamConfig struct {
	Name            string
	MaxAge          time.Duration
	MaxBytes        int64
	DuplicateWindow time.Duration
	// Replicas is how many NATS cluster nodes keep a copy (nats.replicas;
	// 0 means 1). An existing stream is scaled to it on update.
	Replicas int
}

// EnsureStream creates the usage stream or updates it to cfg. The
// aggregator owns the stream and calls it at start-up (tests and
// benchmarks too); concurrent callers converge on the same configuration.
//
// The stream republishes every message it stores, once stored, to
// usage.live.<p> (config.UsageLiveSubjectPrefix) with the headers
// Nats-Stream, Nats-Subject, Nats-Sequence, Nats-Time-Stamp and
// Nats-Last-Sequence (the previous sequence of the same usage.v1.<p>
// subject, 0 for its first): proxies follow the fleet's usage with a core
// NATS subscription there, without a consumer on the stream. An existing
// stream gains the republishing on update.
func EnsureStream(ctx context.Context, js jetstream.JetStream, cfg StreamConfig) (jetstream.Stream, error) {
	sc := jetstream.StreamConfig{
		Name:       cfg.Name,
		Subjects:   []string{config.UsageSubjectPrefix + ">"},
		Storage:    jetstream.FileStorage,
		Retention:  jetstream.LimitsPolicy,
		Discard:    jetstream.DiscardOld,
		MaxAge:     cfg.MaxAge,
		MaxBytes:   cfg.MaxBytes,
		Duplicates: cfg.DuplicateWindow,
		Replicas:   cfg.Replicas,
		// Publishers send fast batches (one ack per batch); servers before
		// NATS 2.14 ignore the field and publishers fall back to one ack
		// per event.
		AllowBatchPublish: true,
		RePublish: &jetstream.RePublish{
			Source:      config.UsageSubjectPrefix + ">",
			Destination: config.UsageLiveSubjectPrefix + ">",
		},
	}
	s, err := js.CreateOrUpdateStream(ctx, sc)
	if err != nil && errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) {
		s, err = js.UpdateStream(ctx, sc)
	}
	if err != nil {
		if cfg.Replicas > 1 {
			// A single server refuses replicas; say which key asked.
			return nil, fmt.Errorf("ensuring stream %s with %d replicas (nats.replicas): %w", cfg.Name, cfg.Replicas, err)
		}
		return nil, fmt.Errorf("ensuring stream %s: %w", cfg.Name, err)
	}
	return s, nil
}
