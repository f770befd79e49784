-- Partial usage (issue 16): a streamed answer that ended early (the backend
-- cut it, or the client left) before the backend reported its counts. Its
-- event carries partial = true, output_tokens counted from the content
-- chunks the client was sent and input_tokens when the backend had
-- reported them. It counts in token_usage_minute like every event (0003's
-- rule, unchanged), so per-key totals include it; token_usage_minute_partial
-- holds the partial part of those totals again, to show it separately.
-- 18.16 has no ADD COLUMN IF NOT EXISTS: there chstore.Migrate counts a
-- duplicate-column error on ADD COLUMN as done.
ALTER TABLE {{.Database}}.usage_events ADD COLUMN {{if .Modern}}IF NOT EXISTS {{end}}partial UInt8 DEFAULT 0;

-- A table of its own rather than columns added to the rollups: on 18.16 a
-- view must produce every column of its target, so new columns there would
-- mean dropping and recreating the views (inserts in between would miss
-- them). Columns are named partial_* so that a query can put it beside
-- token_usage_minute (chstore.Usage, UNION ALL). Keyed by api too: one table
-- serves queries with and without it.
CREATE TABLE IF NOT EXISTS {{.Database}}.token_usage_minute_partial (
    minute                DateTime('UTC'),
    api                   {{lc "String"}},
    endpoint              {{lc "String"}},
    model                 {{lc "String"}},
    api_key               {{lc "String"}},
    partial_requests      UInt64,
    partial_input_tokens  UInt64,
    partial_output_tokens UInt64
) ENGINE = SummingMergeTree
PARTITION BY toYYYYMM(minute)
ORDER BY (minute, api, endpoint, model, api_key);

-- Fed from the same block as usage_events; its name sorts before
-- usage_progress_mv, so progress is still written last.
CREATE MATERIALIZED VIEW IF NOT EXISTS {{.Database}}.token_usage_minute_partial_mv
TO {{.Database}}.token_usage_minute_partial
AS SELECT
    minute,
    api,
    endpoint,
    model,
    api_key,
    count() AS partial_requests,
    sum(input_tokens) AS partial_input_tokens,
    sum(output_tokens) AS partial_output_tokens
FROM {{.Database}}.usage_events
WHERE partial = 1
GROUP BY minute, api, endpoint, model, api_key;
