package limits

import (
	"time"

	"github.com/droverhq/drover/pkg/apikey"
	"github.com/droverhq/drover/services/proxy/internal/catalog"
)

// scope is what a limit applies to: a key (model "") or a key and model.
type scope struct{ key, model string }

// scopes are the scopes a request of key for model counts in: the key's,
// and the key and model's.
func scopes(key, model string) []scope {
	if model == "" {
		return []scope{{key, ""}}
	}
	return []scope{{key, ""}, {key, catalog.Normalize(model)}}
}

// modelLimit is the key's limit for model: its entry under any spelling
// Ollama treats as the same model ("tiny" and "tiny:latest").
func modelLimit(limits map[string]apikey.Limits, model string) apikey.Limits {
	if l, ok := limits[model]; ok {
		return l
	}
	n := catalog.Normalize(model)
	for name, l := range limits {
		if catalog.Normalize(name) == n {
			return l
		}
	}
	return apikey.Limits{}
}

// window is one scope's counts as this replica knows them; guarded by
// Ledger.mu. Windows are UTC calendar windows: the clock minute, day and
// month (stamps are their numbers: Unix minute, Unix day, months since
// year 0).
type window struct {
	minute           int64
	requests, tokens int64 // settled in minute
	// outCount and outTokens are the reservations outstanding fleet-wide
	// (this replica's and every live peer's).
	outCount, outTokens int64
	// seen are settlements seen (this replica's and peers') since the
	// ledger started: the day and month spend without a follower.
	day, dayTokens     int64
	month, monthTokens int64
	// pending are settlements the follower's tally does not hold yet.
	pDay, pDayTokens     int64
	pMonth, pMonthTokens int64
}

// clock is one instant's window stamps.
type clock struct {
	now                time.Time
	minute, day, month int64
}

func clockAt(t time.Time) clock {
	t = t.UTC()
	return clock{now: t, minute: t.Unix() / 60, day: dayOf(t), month: monthOf(t)}
}

func dayOf(t time.Time) int64   { return t.Unix() / 86400 }
func monthOf(t time.Time) int64 { t = t.UTC(); return int64(t.Year())*12 + int64(t.Month()) - 1 }

// roll starts the windows that c is past.
func (w *window) roll(c clock) {
	if w.minute != c.minute {
		w.minute, w.requests, w.tokens = c.minute, 0, 0
	}
	if w.day != c.day {
		w.day, w.dayTokens = c.day, 0
	}
	if w.month != c.month {
		w.month, w.monthTokens = c.month, 0
	}
	if w.pDay != c.day {
		w.pDay, w.pDayTokens = c.day, 0
	}
	if w.pMonth != c.month {
		w.pMonth, w.pMonthTokens = c.month, 0
	}
}

// resets are when each window starts again after c.
func (c clock) nextMinute() time.Time { return c.now.Truncate(time.Minute).Add(time.Minute) }
func (c clock) nextDay() time.Time {
	y, m, d := c.now.Date()
	return time.Date(y, m, d+1, 0, 0, 0, 0, time.UTC)
}
func (c clock) nextMonth() time.Time {
	y, m, _ := c.now.Date()
	return time.Date(y, m+1, 1, 0, 0, 0, 0, time.UTC)
}
func (c clock) monthStart() time.Time {
	y, m, _ := c.now.Date()
	return time.Date(y, m, 1, 0, 0, 0, 0, time.UTC)
}

// Reasons name the limit that refused a request (the reason label of
// drover_limit_refusals_total); a model limit's has the model_ prefix.
const (
	ReasonRequestsPerMinute = "requests_per_minute"
	ReasonTokensPerMinute   = "tokens_per_minute"
	ReasonConcurrent        = "concurrent"
	ReasonTokensPerDay      = "tokens_per_day"
	ReasonTokensPerMonth    = "tokens_per_month"
)

// figures are one scope's figures against its limits at one instant.
type figures struct {
	requests, tokens, inFlight, day, month int64
}

// check is one limit tested: used so far, wanted by the request.
type check struct {
	reason      string
	limit, used int64
	want        int64
	reset       time.Time
}

// checks lists lim's limits with u's figures; what a request wants of
// each is est tokens and one request.
func checks(lim apikey.Limits, u figures, est int64, c clock) []check {
	var out []check
	if lim.Concurrent > 0 {
		out = append(out, check{ReasonConcurrent, lim.Concurrent, u.inFlight, 1, c.now.Add(time.Second)})
	}
	if lim.RequestsPerMinute > 0 {
		out = append(out, check{ReasonRequestsPerMinute, lim.RequestsPerMinute, u.requests, 1, c.nextMinute()})
	}
	if lim.TokensPerMinute > 0 {
		out = append(out, check{ReasonTokensPerMinute, lim.TokensPerMinute, u.tokens, est, c.nextMinute()})
	}
	if lim.TokensPerDay > 0 {
		out = append(out, check{ReasonTokensPerDay, lim.TokensPerDay, u.day, est, c.nextDay()})
	}
	if lim.TokensPerMonth > 0 {
		out = append(out, check{ReasonTokensPerMonth, lim.TokensPerMonth, u.month, est, c.nextMonth()})
	}
	return out
}

// budget reports whether a reason is a spent budget (day or month) rather
// than a rate.
func budget(reason string) bool {
	return reason == ReasonTokensPerDay || reason == ReasonTokensPerMonth ||
		reason == "model_"+ReasonTokensPerDay || reason == "model_"+ReasonTokensPerMonth
}

func maxTokenLimit(l apikey.Limits) int64 {
	return max(l.TokensPerMinute, l.TokensPerDay, l.TokensPerMonth)
}
