-- Exactly-once bookkeeping: the highest JetStream stream sequence stored per
-- partition. Written by a view from the very block that carries the data, so
-- "progress says seq N" implies "rows up to N are in usage_events and in
-- token_usage_minute". Readers take max(max_seq); merges may drop older rows.
CREATE TABLE IF NOT EXISTS {{.Database}}.usage_progress (
    partition   UInt16,
    max_seq     UInt64,
    rows        UInt64,
    inserted_at DateTime
) ENGINE = ReplacingMergeTree(max_seq)
ORDER BY partition;

CREATE MATERIALIZED VIEW IF NOT EXISTS {{.Database}}.usage_progress_mv
TO {{.Database}}.usage_progress
AS SELECT
    partition,
    max(seq) AS max_seq,
    count() AS rows,
    now() AS inserted_at
FROM {{.Database}}.usage_events
GROUP BY partition;
