// Package analytics serves token usage from ClickHouse over HTTP: the
// read-only routes the proxy mounts (/api/token_counts, /api/stats and
// /api/token_usage). Every replica answers the same, because the answers
// come from ClickHouse, never from the replica's memory.
//
// Usage is private by default: a Scope decides, per request, whose usage
// the caller may read. A caller limited to its own key (a client key) gets
// every answer filtered to its key id, whatever it asks; asking for another
// key id is refused with 403. A caller that may read every key's usage (an
// admin) may filter by any key id or none.
//
// key_id is a filter naming a key by its id, never a credential: nothing
// here authenticates. The old name of the filter, api_key, is still read
// as a deprecated alias of key_id (answers carry Deprecation and Warning
// headers); it was easy to mistake for the key itself.
//
// Every value from the request reaches ClickHouse as a bound parameter;
// no SQL is built from input.
//
// Errors are Ollama-style bodies, {"error": "..."}: 400 for bad input, 403
// for another key's usage asked by a key that may only read its own, 404
// for a model with no recorded usage, 503 when ClickHouse is not
// configured or does not answer.
package analytics

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"sort"
	"strings"
	"time"

	"github.com/droverhq/drover/pkg/chstore"
)

// Handler answers analytics requests from one store. A nil store means
// analytics are not configured: every route answers 503.
type Handler struct {
	store   *chstore.Store
	scope   Scope
	now     func() time.Time
	timeout time.Duration
}

// NewHandler returns handlers reading store for the callers that scope
// admits (see Scope; the proxy builds it from the authenticated key).
// A nil scope admits nobody: every request is refused with 403, so a
// handler mounted without thought shows no one's usage.
func NewHandler(store *chstore.Store, scope Scope) *Handler {
	return &Handler{store: store, scope: scope, now: time.Now, timeout: 15 * time.Second}
}

// Register mounts the routes on mux.
func (h *Handler) Register(mux *http.ServeMux) {
	mux.HandleFunc("GET /api/token_counts", h.TokenCounts)
	mux.HandleFunc("POST /api/stats", h.Stats)
	mux.HandleFunc("GET /api/token_usage", h.Usage)
}

// TokenCount is one (endpoint, model) total.
type TokenCount struct {
	Endpoint     string `json:"endpoint"`
	Model        string `json:"model"`
	Requests     uint64 `json:"requests"`
	Errors       uint64 `json:"errors"`
	InputTokens  uint64 `json:"input_tokens"`
	OutputTokens uint64 `json:"output_tokens"`
	TotalTokens  uint64 `json:"total_tokens"`
	// The part of the above from streams cut short (partial usage:
	// counted from what the client was sent).
	PartialRequests     uint64 `json:"partial_requests"`
	PartialInputTokens  uint64 `json:"partial_input_tokens"`
	PartialOutputTokens uint64 `json:"partial_output_tokens"`
}

// TokenCountsResponse is the body of GET /api/token_counts.
type TokenCountsResponse struct {
	// KeyID is the key id the counts are limited to, if any.
	KeyID       string       `json:"key_id,omitempty"`
	TotalTokens uint64       `json:"total_tokens"`
	Breakdown   []TokenCount `json:"breakdown"`
}

// TokenCounts serves GET /api/token_counts: all-time totals per endpoint and
// model (narrowed by optional ?since=, ?until= and ?key_id=), largest first.
func (h *Handler) TokenCounts(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	keyID, _, ok := h.keyFilter(w, r, q)
	if !ok {
		return
	}
	since, until, ok := h.window(w, q.Get("since"), q.Get("until"))
	if !ok {
		return
	}
	rows, ok := h.query(w, r, chstore.UsageQuery{Since: since, Until: until, APIKey: keyID,
		GroupBy: []chstore.Dimension{chstore.ByEndpoint, chstore.ByModel}})
	if !ok {
		return
	}
	resp := TokenCountsResponse{KeyID: keyID, Breakdown: make([]TokenCount, 0, len(rows))}
	for _, row := range rows {
		resp.TotalTokens += row.TotalTokens
		resp.Breakdown = append(resp.Breakdown, TokenCount{Endpoint: row.Endpoint, Model: row.Model,
			Requests: row.Requests, Errors: row.Errors, InputTokens: row.InputTokens,
			OutputTokens: row.OutputTokens, TotalTokens: row.TotalTokens, PartialRequests: row.PartialRequests,
			PartialInputTokens: row.PartialInputTokens, PartialOutputTokens: row.PartialOutputTokens})
	}
	sort.SliceStable(resp.Breakdown, func(i, j int) bool { return resp.Breakdown[i].TotalTokens > resp.Breakdown[j].TotalTokens })
	writeJSON(w, http.StatusOK, resp)
}

// StatsRequest is the body of POST /api/stats.
type StatsRequest struct {
	Model string `json:"model"`
	// KeyID limits the stats to one key's usage (a key id, not a secret).
	KeyID string `json:"key_id,omitempty"`
	// Since and Until bound the window: RFC 3339, a date, or a duration back
	// from now ("24h", "7d"). Empty Since means all time; empty Until, now.
	Since string `json:"since,omitempty"`
	Until string `json:"until,omitempty"`
	// Bucket is the series resolution ("1m", "1h", "1d"); empty picks one
	// from the window.
	Bucket string `json:"bucket,omitempty"`
}

// SeriesPoint is one bucket of a model's time series.
type SeriesPoint struct {
	Timestamp    int64     `json:"timestamp"` // bucket start, Unix seconds
	Time         time.Time `json:"time"`
	Requests     uint64    `json:"requests"`
	Errors       uint64    `json:"errors"`
	InputTokens  uint64    `json:"input_tokens"`
	OutputTokens uint64    `json:"output_tokens"`
	TotalTokens  uint64    `json:"total_tokens"`
}

// maxRequestBody bounds a request body: a StatsRequest is a few short
// fields.
const maxRequestBody = 64 << 10

// StatsResponse is the body of POST /api/stats.
type StatsResponse struct {
	Model string `json:"model"`
	// KeyID is the key id the stats are limited to, if any.
	KeyID  string    `json:"key_id,omitempty"`
	Since  time.Time `json:"since,omitzero"`
	Until  time.Time `json:"until"`
	Bucket string    `json:"bucket"`
	chstore.Sums
	// AvgDurationMs and AvgTTFBMs average over the window's requests.
	AvgDurationMs float64       `json:"avg_duration_ms"`
	AvgTTFBMs     float64       `json:"avg_ttfb_ms"`
	TimeSeries    []SeriesPoint `json:"time_series"`
	// EndpointDistribution is total tokens per endpoint.
	EndpointDistribution map[string]uint64 `json:"endpoint_distribution"`
}

// Stats serves POST /api/stats: one model's totals, its time series and how
// its tokens spread over endpoints.
func (h *Handler) Stats(w http.ResponseWriter, r *http.Request) {
	var req StatsRequest
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxRequestBody))
	if err := dec.Decode(&req); err != nil {
		writeError(w, http.StatusBadRequest, "invalid JSON body: "+err.Error())
		return
	}
	req.Model = strings.TrimSpace(req.Model)
	if req.Model == "" {
		writeError(w, http.StatusBadRequest, "missing 'model'")
		return
	}
	keyID, _, ok := h.scoped(w, r, req.KeyID)
	if !ok {
		return
	}
	since, until, ok := h.window(w, req.Since, req.Until)
	if !ok {
		return
	}
	bucket := AutoBucket(since, until)
	if req.Bucket != "" {
		b, err := ParseBucket(req.Bucket)
		if err != nil {
			writeError(w, http.StatusBadRequest, err.Error())
			return
		}
		bucket = b
	}
	base := chstore.UsageQuery{Model: req.Model, Since: since, Until: until, APIKey: keyID}
	byEndpoint := base
	byEndpoint.GroupBy = []chstore.Dimension{chstore.ByEndpoint}
	endpoints, ok := h.query(w, r, byEndpoint)
	if !ok {
		return
	}
	resp := StatsResponse{Model: req.Model, KeyID: keyID, Since: since, Until: until, Bucket: formatBucket(bucket),
		TimeSeries: []SeriesPoint{}, EndpointDistribution: map[string]uint64{}}
	var durSum, ttfbSum float64
	for _, e := range endpoints {
		resp.Sums.Add(e.Sums)
		durSum += e.DurationMsSum
		ttfbSum += e.TTFBMsSum
		resp.EndpointDistribution[e.Endpoint] = e.TotalTokens
	}
	if resp.Requests == 0 {
		writeError(w, http.StatusNotFound, fmt.Sprintf("no usage recorded for model %q", req.Model))
		return
	}
	resp.AvgDurationMs = durSum / float64(resp.Requests)
	resp.AvgTTFBMs = ttfbSum / float64(resp.Requests)
	series := base
	series.Bucket = bucket
	points, ok := h.query(w, r, series)
	if !ok {
		return
	}
	for _, p := range points {
		resp.TimeSeries = append(resp.TimeSeries, SeriesPoint{Timestamp: p.Bucket.Unix(), Time: p.Bucket,
			Requests: p.Requests, Errors: p.Errors, InputTokens: p.InputTokens,
			OutputTokens: p.OutputTokens, TotalTokens: p.TotalTokens})
	}
	writeJSON(w, http.StatusOK, resp)
}

// UsageResponse is the body of GET /api/token_usage.
type UsageResponse struct {
	// Caller is who asked and what it may read.
	Caller Caller `json:"caller"`
	// KeyID is the key id the rows are limited to, if any: the key_id
	// filter, or the caller's own key when it may read only its own.
	KeyID   string             `json:"key_id,omitempty"`
	Since   time.Time          `json:"since,omitzero"`
	Until   time.Time          `json:"until"`
	GroupBy []string           `json:"group_by"`
	Bucket  string             `json:"bucket,omitempty"`
	Rows    []chstore.UsageRow `json:"rows"`
}

// Usage serves GET /api/token_usage, the general query droverctl usage
// prints: ?group_by=model,endpoint,key,api &since= &until= &bucket= and the
// filters ?model= &endpoint= &key_id= &api= (api_key= is the deprecated
// name of key_id). Grouping or filtering by api (ollama, openai,
// anthropic, responses) reads token_usage_minute_by_api, which counts from
// migration 0005 on. For a caller that may read only its own usage,
// group_by=key has one row at most: its own.
func (h *Handler) Usage(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	keyID, caller, ok := h.keyFilter(w, r, q)
	if !ok {
		return
	}
	since, until, ok := h.window(w, q.Get("since"), q.Get("until"))
	if !ok {
		return
	}
	uq := chstore.UsageQuery{Since: since, Until: until, Model: q.Get("model"), Endpoint: q.Get("endpoint"), APIKey: keyID, API: q.Get("api")}
	resp := UsageResponse{Caller: caller, KeyID: keyID, Since: since, Until: until, GroupBy: []string{}}
	for _, g := range strings.Split(q.Get("group_by"), ",") {
		if g = strings.TrimSpace(g); g == "" {
			continue
		}
		d, err := chstore.ParseDimension(g)
		if err != nil {
			writeError(w, http.StatusBadRequest, "group_by: "+err.Error())
			return
		}
		uq.GroupBy = append(uq.GroupBy, d)
		resp.GroupBy = append(resp.GroupBy, string(d))
	}
	if b := q.Get("bucket"); b != "" {
		d, err := ParseBucket(b)
		if err != nil {
			writeError(w, http.StatusBadRequest, err.Error())
			return
		}
		uq.Bucket = d
		resp.Bucket = formatBucket(d)
	}
	rows, ok := h.query(w, r, uq)
	if !ok {
		return
	}
	resp.Rows = rows
	if resp.Rows == nil {
		resp.Rows = []chstore.UsageRow{}
	}
	writeJSON(w, http.StatusOK, resp)
}

// window parses since and until; until defaults to now.
func (h *Handler) window(w http.ResponseWriter, sinceS, untilS string) (since, until time.Time, ok bool) {
	now := h.now().UTC()
	since, err := ParseTime(sinceS, now)
	if err != nil {
		writeError(w, http.StatusBadRequest, "since: "+err.Error())
		return since, until, false
	}
	until, err = ParseTime(untilS, now)
	if err != nil {
		writeError(w, http.StatusBadRequest, "until: "+err.Error())
		return since, until, false
	}
	if until.IsZero() {
		until = now
	}
	if !since.IsZero() && !since.Before(until) {
		writeError(w, http.StatusBadRequest, "since must be before until")
		return since, until, false
	}
	return since, until, true
}

// query runs q and writes the error response itself when it fails.
func (h *Handler) query(w http.ResponseWriter, r *http.Request, q chstore.UsageQuery) ([]chstore.UsageRow, bool) {
	if h.store == nil {
		writeError(w, http.StatusServiceUnavailable, "analytics are not configured (clickhouse.addr is empty)")
		return nil, false
	}
	ctx, cancel := context.WithTimeout(r.Context(), h.timeout)
	defer cancel()
	rows, err := h.store.Usage(ctx, q)
	if err != nil {
		if errors.Is(r.Context().Err(), context.Canceled) {
			return nil, false // the client left; nobody reads an answer
		}
		writeError(w, http.StatusServiceUnavailable, "analytics unavailable: "+err.Error())
		return nil, false
	}
	return rows, true
}

func formatBucket(d time.Duration) string {
	switch {
	case d%(24*time.Hour) == 0:
		return fmt.Sprintf("%dd", d/(24*time.Hour))
	case d%time.Hour == 0:
		return fmt.Sprintf("%dh", d/time.Hour)
	}
	return fmt.Sprintf("%dm", d/time.Minute)
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func writeError(w http.ResponseWriter, status int, msg string) {
	writeJSON(w, status, map[string]string{"error": msg})
}
