package live

import (
	"context"
	"errors"
	"maps"
	"time"

	"github.com/droverhq/drover/pkg/chstore"
	"github.com/droverhq/drover/pkg/usage"
)

// baseline reads ClickHouse's totals and the committed sequences of parts
// they include. Within one insert the rollup is written before the progress
// row, so the committed sequence is read before and after the sums (with a
// pause, insertSettle); when it moved, the read is repeated.
func (f *fleetTotals) baseline(ctx context.Context, parts []int) (Tally, map[int]uint64, error) {
	for attempt := 0; ; attempt++ {
		before, err := f.store.Committed(ctx, parts)
		if err != nil {
			return nil, nil, err
		}
		sums, err := f.sums.Read(ctx, f.store)
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
			return sums, after, nil
		}
		if attempt == baselineAttempts {
			return nil, nil, errors.New("clickhouse totals kept moving while being read")
		}
	}
}

// tokenTotals are the fleet's token totals per endpoint, model and key,
// all time: what /api/usage shows.
type tokenTotals map[tokenKey]*usage.Count

func (t tokenTotals) Add(ev usage.Event) { add(t, ev) }

// tokenSums reads tokenTotals from token_usage_minute.
type tokenSums struct{}

func (tokenSums) Read(ctx context.Context, store *chstore.Store) (Tally, error) {
	rows, err := store.Usage(ctx, chstore.UsageQuery{GroupBy: []chstore.Dimension{chstore.ByEndpoint, chstore.ByModel, chstore.ByAPIKey}})
	if err != nil {
		return nil, err
	}
	counts := make(tokenTotals, len(rows))
	for _, r := range rows {
		counts[tokenKey{r.Endpoint, r.Model, r.APIKey}] = &usage.Count{
			Requests: int64(r.Requests), Errors: int64(r.Errors),
			InputTokens: int64(r.InputTokens), OutputTokens: int64(r.OutputTokens),
			UnknownTokens: int64(r.TokensUnknown),
		}
	}
	return counts, nil
}

func (tokenSums) Ready(Tally) {}

func add(m map[tokenKey]*usage.Count, ev usage.Event) {
	k := tokenKey{ev.Endpoint, ev.Model, ev.APIKey}
	c := m[k]
	if c == nil {
		c = &usage.Count{}
		m[k] = c
	}
	c.Add(ev.Count())
}
