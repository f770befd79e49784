-- The table users query: one row per (minute, endpoint, model, api_key) once
-- merged. Every non-key column is summed by SummingMergeTree, so
-- sum(...) GROUP BY ... is exact with or without FINAL.
CREATE TABLE IF NOT EXISTS {{.Database}}.token_usage_minute (
    minute          DateTime('UTC'),
    endpoint        {{lc "String"}},
    model           {{lc "String"}},
    api_key         {{lc "String"}},
    requests        UInt64,
    errors          UInt64,
    input_tokens    UInt64,
    output_tokens   UInt64,
    total_tokens    UInt64,
    -- requests whose backend did not report both counts (counted as zero above)
    tokens_unknown  UInt64,
    duration_ms_sum Float64,
    ttfb_ms_sum     Float64
) ENGINE = SummingMergeTree
PARTITION BY toYYYYMM(minute)
ORDER BY (minute, endpoint, model, api_key);

-- Fed from the same block as usage_events, so the rollup holds exactly the
-- rows the raw table does. Its name sorts before usage_progress_mv: views run
-- in name order, so progress is written last.
--
-- The counting rule is usage.Event.Count (pkg/usage/count.go), the one every
-- Go total uses: each event is one request; error adds one error; input and
-- output add the counts the backend reported (an unreported count is stored
-- as 0); an event without both counts (tokens_known = 0) adds one to
-- tokens_unknown, errors included. TestTokenUsageMinuteCountsAsEventCount
-- (pkg/chstore) feeds the same events to both and compares.
CREATE MATERIALIZED VIEW IF NOT EXISTS {{.Database}}.token_usage_minute_mv
TO {{.Database}}.token_usage_minute
AS SELECT
    minute,
    endpoint,
    model,
    api_key,
    count() AS requests,
    sum(error) AS errors,
    sum(input_tokens) AS input_tokens,
    sum(output_tokens) AS output_tokens,
    sum(total_tokens) AS total_tokens,
    toUInt64(count() - sum(tokens_known)) AS tokens_unknown,
    sum(duration_ms) AS duration_ms_sum,
    sum(ttfb_ms) AS ttfb_ms_sum
FROM {{.Database}}.usage_events
GROUP BY minute, endpoint, model, api_key;
