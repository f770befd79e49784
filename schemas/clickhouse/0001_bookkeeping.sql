-- The database and the record of applied migrations.
CREATE DATABASE IF NOT EXISTS {{.Database}};

CREATE TABLE IF NOT EXISTS {{.Database}}.schema_migrations (
    version    UInt32,
    name       String,
    applied_at DateTime
) ENGINE = MergeTree
ORDER BY version;
