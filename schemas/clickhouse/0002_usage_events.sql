-- One row per finished request, exactly as the proxy reported it, plus where it
-- came from in the stream: (partition, seq) is unique, and the aggregator that
-- owns a partition writes rows in seq order, one block per batch. The
-- materialized views in 0003 and 0004 read every block inserted here.
CREATE TABLE IF NOT EXISTS {{.Database}}.usage_events (
    id            String,
{{- if .Modern}}
    time          DateTime64(3, 'UTC') CODEC(Delta, ZSTD),
{{- else}}
    time          DateTime('UTC'),
{{- end}}
    minute        DateTime('UTC'),
    replica       {{lc "String"}},
    endpoint      {{lc "String"}},
    model         {{lc "String"}},
    backend_model {{lc "String"}},
    api_key       {{lc "String"}},
    route         {{lc "String"}},
    status        UInt16,
    error         UInt8,
    input_tokens  UInt64,
    output_tokens UInt64,
    total_tokens  UInt64,
    tokens_known  UInt8,
    stream        UInt8,
    ttfb_ms       Float64,
    duration_ms   Float64,
    attempts      UInt8,
    partition     UInt16,
{{- if .Modern}}
    seq           UInt64 CODEC(Delta, ZSTD),
{{- else}}
    seq           UInt64,
{{- end}}
    inserted_at   DateTime DEFAULT now()
) ENGINE = MergeTree
PARTITION BY toYYYYMM(minute)
ORDER BY (minute, endpoint, model, api_key)
{{- if .Modern}}
TTL minute + INTERVAL 400 DAY
{{- end}}
;
