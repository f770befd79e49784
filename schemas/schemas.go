// Package schemas embeds Drover's public data contracts so that code and tests
// read the same files operators do: the usage event JSON Schema (usage/) and
// the ordered ClickHouse migrations (clickhouse/).
package schemas

import "embed"

// FS holds usage/*.json and clickhouse/*.sql.
//
//go:embed usage clickhouse
var FS embed.FS
