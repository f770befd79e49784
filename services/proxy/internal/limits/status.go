// Package limits enforces keys' limits and budgets across replicas:
// requests and tokens per minute, concurrent requests, tokens per UTC day
// and month, per key and per key and model (docs/limits.md).
package limits

import (
	"github.com/droverhq/drover/pkg/apikey"
	"github.com/droverhq/drover/services/proxy/internal/auth"
	"github.com/droverhq/drover/services/proxy/internal/catalog"
)

// The shapes of a key's limits status live in pkg/apikey, shared with
// droverctl.
type (
	Status    = apikey.Status
	Remaining = apikey.Remaining
	Spend     = apikey.Spend
	Resets    = apikey.Resets
)

// Status is p's limits, what is left and what it spent, fleet-wide as far
// as this replica knows (Status.Fleet, Status.Reason).
func (l *Ledger) Status(p auth.Principal) Status {
	c := clockAt(l.opts.Now())
	st := Status{KeyID: p.ID, Limits: p.Limits, ModelLimits: p.ModelLimits,
		Resets: Resets{Minute: c.nextMinute(), Day: c.nextDay(), Month: c.nextMonth()}}
	var followReason string
	ready := l.follower != nil
	if l.follower != nil {
		ready, followReason = l.follower.State()
	}
	l.mu.Lock()
	w := l.win(scope{p.ID, ""}, c)
	u := l.use(scope{p.ID, ""}, c)
	st.Spend = Spend{RequestsThisMinute: u.requests, TokensThisMinute: u.tokens, InFlight: u.inFlight, TokensToday: u.day, TokensThisMonth: u.month, Reserved: w.outTokens}
	if l.count {
		st.Spend.TokensToday += w.outTokens
		st.Spend.TokensThisMonth += w.outTokens
		st.Spend.TokensThisMinute += w.outTokens
	}
	st.Remaining = remaining(p.Limits, u)
	for m, ml := range p.ModelLimits {
		if st.ModelRemaining == nil {
			st.ModelRemaining = map[string]Remaining{}
		}
		st.ModelRemaining[m] = remaining(ml, l.use(scope{p.ID, catalog.Normalize(m)}, c))
	}
	local := l.local
	l.mu.Unlock()
	switch {
	case local != "":
		st.Reason = local
	case !ready:
		st.Reason = "day and month spend not read yet (until then, this replica's and its peers' since it started): " + followReason
	default:
		st.Fleet, st.Reason = true, followReason
	}
	return st
}

func remaining(lim apikey.Limits, u figures) Remaining {
	left := func(limit, used int64) *int64 {
		if limit <= 0 {
			return nil
		}
		v := max(0, limit-used)
		return &v
	}
	return Remaining{
		RequestsThisMinute: left(lim.RequestsPerMinute, u.requests),
		TokensThisMinute:   left(lim.TokensPerMinute, u.tokens),
		Concurrent:         left(lim.Concurrent, u.inFlight),
		TokensToday:        left(lim.TokensPerDay, u.day),
		TokensThisMonth:    left(lim.TokensPerMonth, u.month),
	}
}

// Outstanding is this replica's reservations not yet settled and the
// in-flight count fleet-wide it holds for key (tests and /health).
func (l *Ledger) Outstanding(key string) (own int, fleetInFlight int64) {
	c := clockAt(l.opts.Now())
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, r := range l.own {
		if r.key == key {
			own++
		}
	}
	return own, l.win(scope{key, ""}, c).outCount
}

// Pending is how many settlements wait for their event on the usage
// stream (counted meanwhile from the settlement; tests and /health).
func (l *Ledger) Pending() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.pending)
}
