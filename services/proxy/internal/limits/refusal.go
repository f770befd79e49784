package limits

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/droverhq/drover/pkg/apikey"
)

// Refusal is a request over a limit: answered 429 with Header (Retry-After
// and the x-ratelimit-* headers) and Message in the API's error format.
type Refusal struct {
	// Reason is the limit that refused (the one that resets last when
	// several did): a Reason* constant, model_ prefixed for a model limit.
	Reason string
	// Budget: a day or month budget is spent (OpenAI's insufficient_quota)
	// rather than a rate exceeded (rate_limit_exceeded).
	Budget     bool
	Message    string
	RetryAfter time.Duration
	Header     map[string]string
}

// refusal describes the failed checks: the one that resets last decides
// Retry-After (every one must clear for the request to fit).
func refusal(key, model string, failed []check, c clock) *Refusal {
	worst := failed[0]
	for _, ck := range failed[1:] {
		if ck.reset.After(worst.reset) {
			worst = ck
		}
	}
	wait := worst.reset.Sub(c.now)
	r := &Refusal{Reason: worst.reason, Budget: budget(worst.reason), RetryAfter: wait}
	who := "key " + key
	if strings.HasPrefix(worst.reason, "model_") {
		who += " and model " + model
	}
	figures := fmt.Sprintf("Limit %d, Used %d, Requested %d", worst.limit, worst.used, worst.want)
	switch strings.TrimPrefix(worst.reason, "model_") {
	case ReasonRequestsPerMinute:
		r.Message = fmt.Sprintf("Rate limit reached for %s on requests per min (RPM): %s. Please try again in %s.", who, figures, openAIDuration(wait))
	case ReasonTokensPerMinute:
		r.Message = fmt.Sprintf("Rate limit reached for %s on tokens per min (TPM): %s. Please try again in %s.", who, figures, openAIDuration(wait))
	case ReasonConcurrent:
		r.Message = fmt.Sprintf("Rate limit reached for %s on concurrent requests: %s. Please try again in %s.", who, figures, openAIDuration(wait))
	case ReasonTokensPerDay:
		r.Message = fmt.Sprintf("You exceeded your current quota: the token budget per day of %s: %s. It resets at %s.", who, figures, worst.reset.Format(time.RFC3339))
	case ReasonTokensPerMonth:
		r.Message = fmt.Sprintf("You exceeded your current quota: the token budget per month of %s: %s. It resets at %s.", who, figures, worst.reset.Format(time.RFC3339))
	}
	return r
}

// RetryAfterSeconds is Retry-After's value: whole seconds, rounded up, at
// least 1.
func (r *Refusal) RetryAfterSeconds() string {
	return strconv.FormatInt(max(1, int64((r.RetryAfter+time.Second-1)/time.Second)), 10)
}

// headers are OpenAI's x-ratelimit-* headers for a key: requests from the
// requests-per-minute limit, tokens from the tokens-per-minute limit, or,
// without one, the day then the month budget (with its own reset). The key
// limit is shown where set, else the model's. Remaining counts the request
// being answered.
func headers(kl, ml apikey.Limits, ku, mu figures, c clock) map[string]string {
	h := map[string]string{}
	pick := func(k, m int64) (int64, bool) {
		if k > 0 {
			return k, true
		}
		return m, false
	}
	if lim, key := pick(kl.RequestsPerMinute, ml.RequestsPerMinute); lim > 0 {
		u := mu.requests
		if key {
			u = ku.requests
		}
		h["x-ratelimit-limit-requests"] = strconv.FormatInt(lim, 10)
		h["x-ratelimit-remaining-requests"] = strconv.FormatInt(max(0, lim-u), 10)
		h["x-ratelimit-reset-requests"] = openAIDuration(c.nextMinute().Sub(c.now))
	}
	type tok struct {
		k, m  int64
		ku    int64
		mu    int64
		reset time.Time
	}
	for _, t := range []tok{
		{kl.TokensPerMinute, ml.TokensPerMinute, ku.tokens, mu.tokens, c.nextMinute()},
		{kl.TokensPerDay, ml.TokensPerDay, ku.day, mu.day, c.nextDay()},
		{kl.TokensPerMonth, ml.TokensPerMonth, ku.month, mu.month, c.nextMonth()},
	} {
		lim, key := pick(t.k, t.m)
		if lim <= 0 {
			continue
		}
		u := t.mu
		if key {
			u = t.ku
		}
		h["x-ratelimit-limit-tokens"] = strconv.FormatInt(lim, 10)
		h["x-ratelimit-remaining-tokens"] = strconv.FormatInt(max(0, lim-u), 10)
		h["x-ratelimit-reset-tokens"] = openAIDuration(t.reset.Sub(c.now))
		break
	}
	return h
}

// openAIDuration formats d as OpenAI's reset headers do: "20ms" under a
// second, else whole seconds rounded up in Go's form ("1s", "6m0s",
// "23h5m0s").
func openAIDuration(d time.Duration) string {
	if d <= 0 {
		return "0s"
	}
	if d < time.Second {
		return max(d.Round(time.Millisecond), time.Millisecond).String()
	}
	return ((d + time.Second - 1) / time.Second * time.Second).String()
}
