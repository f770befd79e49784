package limits

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/droverhq/drover/pkg/chstore"
	"github.com/droverhq/drover/pkg/usage"
	"github.com/droverhq/drover/services/proxy/internal/live"
)

// budgetSums is the ledger's live.Sums: token spend per key and per key
// and model, per UTC day and month, from the start of the month.
type budgetSums struct{ l *Ledger }

// Read reads token_usage_minute since the start of the UTC month, grouped
// by key, model and day.
func (b budgetSums) Read(ctx context.Context, store *chstore.Store) (live.Tally, error) {
	c := clockAt(b.l.opts.Now())
	rows, err := store.Usage(ctx, chstore.UsageQuery{Since: c.monthStart(), GroupBy: []chstore.Dimension{chstore.ByAPIKey, chstore.ByModel}, Bucket: 24 * time.Hour})
	if err != nil {
		return nil, fmt.Errorf("reading this month's spend: %w", err)
	}
	t := &budgetTally{l: b.l, days: map[scopeAt]int64{}, months: map[scopeAt]int64{}, ids: map[string]struct{}{}}
	for _, r := range rows {
		t.count(r.APIKey, r.Model, r.Bucket, int64(r.InputTokens+r.OutputTokens))
	}
	return t, nil
}

func (b budgetSums) Ready(t live.Tally) { b.l.ready(t.(*budgetTally)) }

// scopeAt is a scope's day or month.
type scopeAt struct {
	scope
	at int64
}

// budgetTally is one build's spend.
type budgetTally struct {
	l *Ledger

	mu     sync.Mutex // guards the fields below
	days   map[scopeAt]int64
	months map[scopeAt]int64
	ids    map[string]struct{} // events added before ready (nil after)
	ready  bool
}

func (t *budgetTally) count(key, model string, at time.Time, tokens int64) {
	for _, sc := range scopes(key, model) {
		t.days[scopeAt{sc, dayOf(at)}] += tokens
		t.months[scopeAt{sc, monthOf(at)}] += tokens
	}
}

// Add counts an event stored after the build's ClickHouse read; once the
// tally is current, the ledger hears of it too (to stop counting the
// event's settlement as pending). t.mu is released first: the ledger
// reads tallies under its own lock.
func (t *budgetTally) Add(ev usage.Event) {
	in, out, _ := ev.Tokens()
	t.mu.Lock()
	t.count(ev.APIKey, ev.Model, ev.Time, in+out)
	ready := t.ready
	if !ready {
		t.ids[ev.ID] = struct{}{}
	}
	t.mu.Unlock()
	if ready {
		t.l.streamed(t, ev)
	}
}

// spent is sc's tokens in c's day and month.
func (t *budgetTally) spent(sc scope, c clock) (day, month int64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.days[scopeAt{sc, c.day}], t.months[scopeAt{sc, c.month}]
}
