package chstore

import (
	"context"
	"fmt"
	"math"
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
	"status, error, input_tokens, output_tokens, total_tokens, tokens_known, stream, ttfb_ms, duration_ms, attempts, partition, seq, api, partial"

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
	// Columnar appends: one slice per column is several times cheaper than
	// row-by-row Append at the aggregator's rates.
	n := len(rows)
	var (
		ids, replicas, endpoints, models, backendModels, apiKeys, routes = make([]string, n), make([]string, n), make([]string, n), make([]string, n), make([]string, n), make([]string, n), make([]string, n)
		apis                                                             = make([]string, n)
		times, minutes                                                   = make([]time.Time, n), make([]time.Time, n)
		statuses, partitions                                             = make([]uint16, n), make([]uint16, n)
		errs, known, streams, attempts                                   = make([]uint8, n), make([]uint8, n), make([]uint8, n), make([]uint8, n)
		partials                                                         = make([]uint8, n)
		ins, outs, totals, seqs                                          = make([]uint64, n), make([]uint64, n), make([]uint64, n), make([]uint64, n)
		ttfbs, durations                                                 = make([]float64, n), make([]float64, n)
	)
	for i := range rows {
		r := &rows[i]
		e := &r.Event
		// The event's facts as reported; token_usage_minute_mv counts them
		// by usage.Event.Count's rule.
		in, out, ok := e.Tokens()
		in, out = usage.ClampTokens(in), usage.ClampTokens(out) // in+out cannot wrap
		t := e.Time.UTC()
		ids[i], times[i], minutes[i] = e.ID, t, t.Truncate(time.Minute)
		replicas[i], endpoints[i], models[i], backendModels[i], apiKeys[i], routes[i] = e.Replica, e.Endpoint, e.Model, e.BackendModel, e.APIKey, e.Route
		statuses[i], errs[i] = uint16(clamp(e.Status, 0, math.MaxUint16)), b2u(e.Error)
		ins[i], outs[i], totals[i], known[i], streams[i] = uint64(in), uint64(out), uint64(in+out), b2u(ok), b2u(e.Stream)
		ttfbs[i], durations[i], attempts[i] = e.TTFBMs, e.DurationMs, uint8(clamp(e.Attempts, 0, math.MaxUint8))
		partitions[i], seqs[i] = r.Partition, r.Seq
		// Events from before the api field are named by their route.
		apis[i] = e.APIName()
		partials[i] = b2u(e.Partial)
	}
	cols := []any{ids, times, minutes, replicas, endpoints, models, backendModels, apiKeys, routes,
		statuses, errs, ins, outs, totals, known, streams, ttfbs, durations, attempts, partitions, seqs, apis, partials}
	for i, col := range cols {
		if err := batch.Column(i).Append(col); err != nil {
			_ = batch.Abort()
			return fmt.Errorf("appending usage_events column %d: %w", i, err)
		}
	}
	if err := batch.Send(); err != nil {
		return fmt.Errorf("inserting %d usage events: %w", len(rows), err)
	}
	return nil
}

// Committed returns, for each partition asked for, the highest stream
// sequence stored (0 when none is). It reads usage_progress, which the view
// usage_progress_mv fills from the same blocks as usage_events.
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

// EventCounts counts the rows of usage_events and their distinct ids, for
// consistency checks: the two are equal when no event was stored twice.
func (s *Store) EventCounts(ctx context.Context) (rows, ids uint64, err error) {
	err = s.conn.QueryRow(ctx, "SELECT count() AS n, uniqExact(id) AS d FROM "+s.table("usage_events")).Scan(&rows, &ids)
	if err != nil {
		return 0, 0, fmt.Errorf("counting usage events: %w", err)
	}
	return rows, ids, nil
}

func b2u(b bool) uint8 {
	if b {
		return 1
	}
	return 0
}

func clamp(v, lo, hi int) int { return min(max(v, lo), hi) }
