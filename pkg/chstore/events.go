package chstore

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/droverhq/drover/pkg/usage"
)

// EventRow is one usage event and where it sits in the usage stream.
type EventRow struct {
	Event     usage.Event
	Partition uint16 // usage.v1.<Partition>
	Seq       uint64 // JetStream stream sequence
}

// eventColumns is the column list of every insert into usage_events; 18.16
// silently drops batches whose INSERT does not name its columns.
const eventColumns = "id, time, minute, replica, endpoint, model, backend_model, api_key, route, " +
	"status, error, input_tokens, output_tokens, total_tokens, tokens_known, stream, ttfb_ms, duration_ms, attempts, partition, seq"

// InsertEvents writes rows to usage_events as one block. The materialized
// views derive token_usage_minute and usage_progress from that same block,
// so when InsertEvents returns nil the rows, their minute sums and the
// partitions' new committed sequences are all stored. On error nothing can
// be assumed either way: the caller retries, and the committed sequence
// (Committed) tells what got in.
func (s *Store) InsertEvents(ctx context.Context, rows []EventRow) error {
	if len(rows) == 0 {
		return nil
	}
	batch, err := s.conn.PrepareBatch(ctx, "INSERT INTO "+s.table("usage_events")+" ("+eventColumns+")")
	if err != nil {
		return fmt.Errorf("preparing usage_events insert: %w", err)
	}
	for i := range rows {
		r := &rows[i]
		e := &r.Event
		in, out, known := e.Tokens()
		t := e.Time.UTC()
		err := batch.Append(
			e.ID, t, t.Truncate(time.Minute), e.Replica, e.Endpoint, e.Model, e.BackendModel, e.APIKey, e.Route,
			uint16(clamp(e.Status, 0, 65535)), b2u(e.Error), uint64(max(in, 0)), uint64(max(out, 0)), uint64(max(in, 0)+max(out, 0)), b2u(known), b2u(e.Stream),
			e.TTFBMs, e.DurationMs, uint8(clamp(e.Attempts, 0, 255)), r.Partition, r.Seq,
		)
		if err != nil {
			_ = batch.Abort()
			return fmt.Errorf("appending event %s: %w", e.ID, err)
		}
	}
	if err := batch.Send(); err != nil {
		return fmt.Errorf("inserting %d usage events: %w", len(rows), err)
	}
	return nil
}

// Committed returns, for each partition asked for, the highest stream
// sequence stored in usage_events (0 when none is).
func (s *Store) Committed(ctx context.Context, partitions []int) (map[int]uint64, error) {
	out := make(map[int]uint64, len(partitions))
	if len(partitions) == 0 {
		return out, nil
	}
	list := make([]string, len(partitions))
	for i, p := range partitions {
		list[i] = strconv.Itoa(p)
		out[p] = 0
	}
	rows, err := s.conn.Query(ctx, "SELECT partition, max(max_seq) AS committed FROM "+s.table("usage_progress")+
		" WHERE partition IN ("+strings.Join(list, ",")+") GROUP BY partition")
	if err != nil {
		return nil, fmt.Errorf("reading committed sequences: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var p uint16
		var seq uint64
		if err := rows.Scan(&p, &seq); err != nil {
			return nil, fmt.Errorf("reading committed sequences: %w", err)
		}
		out[int(p)] = seq
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("reading committed sequences: %w", err)
	}
	return out, nil
}

func b2u(b bool) uint8 {
	if b {
		return 1
	}
	return 0
}

func clamp(v, lo, hi int) int { return min(max(v, lo), hi) }
