-- The API the client spoke (usage.APIOf: ollama, openai, anthropic,
-- responses) on every raw row, and a rollup by it. Rows stored before this
-- migration have api = '' (their route column says which API they came
-- through); token_usage_minute_by_api starts counting when this file is
-- applied and is not backfilled. token_usage_minute is unchanged.
-- 18.16 has no ADD COLUMN IF NOT EXISTS: there chstore.Migrate counts a
-- duplicate-column error on ADD COLUMN as done.
ALTER TABLE {{.Database}}.usage_events ADD COLUMN {{if .Modern}}IF NOT EXISTS {{end}}api {{lc "String"}} DEFAULT '';

-- token_usage_minute with the API as one more key column: every non-key
-- column is summed by SummingMergeTree, so sum(...) GROUP BY ... is exact
-- with or without FINAL.
CREATE TABLE IF NOT EXISTS {{.Database}}.token_usage_minute_by_api (
    minute          DateTime('UTC'),
    api             {{lc "String"}},
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
ORDER BY (minute, api, endpoint, model, api_key);

-- Fed from the same block as usage_events, by the same counting rule as
-- token_usage_minute_mv (0003; usage.Event.Count in pkg/usage/count.go).
-- Its name sorts before usage_progress_mv, so progress is still written
-- last. TestTokenUsageMinuteByAPICountsAsEventCount (pkg/chstore) compares
-- it with the Go rule.
CREATE MATERIALIZED VIEW IF NOT EXISTS {{.Database}}.token_usage_minute_by_api_mv
TO {{.Database}}.token_usage_minute_by_api
AS SELECT
    minute,
    api,
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
GROUP BY minute, api, endpoint, model, api_key;
