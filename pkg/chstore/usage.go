package chstore

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Dimension is a column usage can be grouped or filtered by.
type Dimension string

// The dimensions of token_usage_minute, and ByAPI, which only
// token_usage_minute_by_api has.
const (
	ByEndpoint Dimension = "endpoint"
	ByModel    Dimension = "model"
	ByAPIKey   Dimension = "api_key"
	// ByAPI is the API the client spoke (usage.APIOf). Grouping or
	// filtering by it reads token_usage_minute_by_api, which counts from
	// the migration that created it (0005) on.
	ByAPI Dimension = "api"
)

// ParseDimension accepts endpoint, model, key or api_key, and api.
func ParseDimension(s string) (Dimension, error) {
	switch strings.ToLower(s) {
	case "endpoint":
		return ByEndpoint, nil
	case "model":
		return ByModel, nil
	case "key", "api_key", "apikey":
		return ByAPIKey, nil
	case "api":
		return ByAPI, nil
	}
	return "", fmt.Errorf("unknown dimension %q: want endpoint, model, key or api", s)
}

// UsageQuery selects and groups token_usage_minute. Zero values mean "all".
type UsageQuery struct {
	// Since (inclusive) and Until (exclusive) bound the minute buckets.
	Since, Until time.Time
	// Filters; empty means any. API (like grouping by ByAPI) reads
	// token_usage_minute_by_api instead of token_usage_minute.
	Endpoint, Model, APIKey, API string
	GroupBy                      []Dimension
	// Bucket groups by time: a whole number of minutes (1m, 1h, 24h...);
	// zero means no time grouping.
	Bucket time.Duration
}

// Sums are the counts token_usage_minute holds for a group of events,
// each event counted by usage.Event.Count's rule.
type Sums struct {
	Requests      uint64 `json:"requests"`
	Errors        uint64 `json:"errors"`
	InputTokens   uint64 `json:"input_tokens"`
	OutputTokens  uint64 `json:"output_tokens"`
	TotalTokens   uint64 `json:"total_tokens"`
	TokensUnknown uint64 `json:"tokens_unknown"`
	// The part of the above from partial events (usage.Event.Partial:
	// streams cut short, counted from what the client was sent);
	// migration 0006 on.
	PartialRequests     uint64 `json:"partial_requests"`
	PartialInputTokens  uint64 `json:"partial_input_tokens"`
	PartialOutputTokens uint64 `json:"partial_output_tokens"`
}

// Add adds o to s.
func (s *Sums) Add(o Sums) {
	s.Requests += o.Requests
	s.Errors += o.Errors
	s.InputTokens += o.InputTokens
	s.OutputTokens += o.OutputTokens
	s.TotalTokens += o.TotalTokens
	s.TokensUnknown += o.TokensUnknown
	s.PartialRequests += o.PartialRequests
	s.PartialInputTokens += o.PartialInputTokens
	s.PartialOutputTokens += o.PartialOutputTokens
}

// UsageRow is one group. Bucket is zero without time grouping; a dimension
// not grouped by is empty.
type UsageRow struct {
	Bucket   time.Time `json:"bucket,omitzero"`
	Endpoint string    `json:"endpoint,omitempty"`
	Model    string    `json:"model,omitempty"`
	APIKey   string    `json:"api_key,omitempty"`
	API      string    `json:"api,omitempty"`
	Sums
	DurationMsSum float64 `json:"duration_ms_sum"`
	TTFBMsSum     float64 `json:"ttfb_ms_sum"`
}

// MaxUsageRows bounds what one Usage call returns.
const MaxUsageRows = 100000

// Usage sums token_usage_minute (token_usage_minute_by_api when q groups or
// filters by API) over q, with the partial part of each group from
// token_usage_minute_partial. Rows come ordered by bucket, then
// by the grouped dimensions. It never needs FINAL: every measure is a sum.
func (s *Store) Usage(ctx context.Context, q UsageQuery) ([]UsageRow, error) {
	var sel, group []string
	if q.Bucket != 0 {
		if q.Bucket < time.Minute || q.Bucket%time.Minute != 0 {
			return nil, fmt.Errorf("bucket %s: want a whole number of minutes", q.Bucket)
		}
		secs := strconv.FormatInt(int64(q.Bucket/time.Second), 10)
		sel = append(sel, "toDateTime(intDiv(toUInt32(minute), "+secs+") * "+secs+", 'UTC') AS bucket")
		group = append(group, "bucket")
	}
	seen := map[Dimension]bool{}
	var dims []Dimension
	for _, d := range q.GroupBy {
		switch d {
		case ByEndpoint, ByModel, ByAPIKey, ByAPI:
		default:
			return nil, fmt.Errorf("unknown dimension %q", d)
		}
		if !seen[d] {
			seen[d] = true
			dims = append(dims, d)
			sel = append(sel, string(d))
			group = append(group, string(d))
		}
	}
	// Aggregates get names of their own: "sum(x) AS x" beside GROUP BY
	// fails on 18.16.
	sel = append(sel, "sum(requests) AS s_requests", "sum(errors) AS s_errors",
		"sum(input_tokens) AS s_input", "sum(output_tokens) AS s_output", "sum(total_tokens) AS s_total",
		"sum(tokens_unknown) AS s_unknown", "sum(duration_ms_sum) AS s_duration", "sum(ttfb_ms_sum) AS s_ttfb",
		"sum(partial_requests) AS s_partial", "sum(partial_input_tokens) AS s_partial_in", "sum(partial_output_tokens) AS s_partial_out")
	var where []string
	var args []any
	if !q.Since.IsZero() {
		where = append(where, "minute >= toDateTime(?)")
		args = append(args, q.Since.Unix())
	}
	if !q.Until.IsZero() {
		where = append(where, "minute < toDateTime(?)")
		args = append(args, q.Until.Unix())
	}
	for col, v := range map[string]string{"endpoint": q.Endpoint, "model": q.Model, "api_key": q.APIKey, "api": q.API} {
		if v != "" {
			where = append(where, col+" = ?")
			args = append(args, v)
		}
	}
	table, keys := "token_usage_minute", "minute, endpoint, model, api_key"
	if seen[ByAPI] || q.API != "" {
		table, keys = "token_usage_minute_by_api", keys+", api"
	}
	// The partial part of the sums (token_usage_minute_partial) beside the
	// sums, each branch filtered on its own primary key.
	cond := ""
	if len(where) > 0 {
		cond = " WHERE " + strings.Join(where, " AND ")
		args = append(args, args...)
	}
	sql := "SELECT " + strings.Join(sel, ", ") + " FROM (SELECT " + keys +
		", requests, errors, input_tokens, output_tokens, total_tokens, tokens_unknown, duration_ms_sum, ttfb_ms_sum" +
		", toUInt64(0) AS partial_requests, toUInt64(0) AS partial_input_tokens, toUInt64(0) AS partial_output_tokens" +
		" FROM " + s.table(table) + cond + " UNION ALL SELECT " + keys +
		", toUInt64(0) AS requests, toUInt64(0) AS errors, toUInt64(0) AS input_tokens, toUInt64(0) AS output_tokens" +
		", toUInt64(0) AS total_tokens, toUInt64(0) AS tokens_unknown, toFloat64(0) AS duration_ms_sum, toFloat64(0) AS ttfb_ms_sum" +
		", partial_requests, partial_input_tokens, partial_output_tokens" +
		" FROM " + s.table("token_usage_minute_partial") + cond + ")"
	if len(group) > 0 {
		sql += " GROUP BY " + strings.Join(group, ", ") + " ORDER BY " + strings.Join(group, ", ")
	}
	sql += " LIMIT " + strconv.Itoa(MaxUsageRows)

	rows, err := s.conn.Query(ctx, sql, args...)
	if err != nil {
		return nil, fmt.Errorf("querying token usage: %w", err)
	}
	defer rows.Close()
	var out []UsageRow
	for rows.Next() {
		var r UsageRow
		var dest []any
		if q.Bucket != 0 {
			dest = append(dest, &r.Bucket)
		}
		for _, d := range dims {
			switch d {
			case ByEndpoint:
				dest = append(dest, &r.Endpoint)
			case ByModel:
				dest = append(dest, &r.Model)
			case ByAPIKey:
				dest = append(dest, &r.APIKey)
			case ByAPI:
				dest = append(dest, &r.API)
			}
		}
		dest = append(dest, &r.Requests, &r.Errors, &r.InputTokens, &r.OutputTokens, &r.TotalTokens,
			&r.TokensUnknown, &r.DurationMsSum, &r.TTFBMsSum, &r.PartialRequests, &r.PartialInputTokens, &r.PartialOutputTokens)
		if err := rows.Scan(dest...); err != nil {
			return nil, fmt.Errorf("reading token usage: %w", err)
		}
		r.Bucket = r.Bucket.UTC()
		out = append(out, r)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("reading token usage: %w", err)
	}
	return out, nil
}
