package main

import (
	"context"
	"encoding/csv"
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/droverhq/drover/pkg/analytics"
	"github.com/droverhq/drover/pkg/chstore"
)

var usageCommand = &command{
	name:    "usage",
	summary: "token usage from ClickHouse, grouped by model, endpoint, key or api",
	run:     runUsage,
}

func runUsage(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs, common := newFlagSet("usage", "[--group-by model|endpoint|key|api[,...]] [--since 24h|RFC3339] [--until ...] [--bucket 1m|1h|1d] [--key-id ID] [--json|--csv]", stderr)
	groupBy := fs.String("group-by", "model", "comma-separated dimensions: model, endpoint, key, api (empty: one total)")
	since := fs.String("since", "24h", "start: RFC 3339 time, a date, or a duration back from now (24h, 7d); empty for all time")
	until := fs.String("until", "", "end (exclusive), same forms as --since; default now")
	bucket := fs.String("bucket", "", "time buckets: 1m, 5m, 1h, 1d (default: none, one row per group)")
	model := fs.String("model", "", "only this model")
	endpoint := fs.String("endpoint", "", "only this endpoint")
	keyID := fs.String("key-id", "", "only this key's usage (its id, not its secret)")
	oldKey := fs.String("key", "", "deprecated name of --key-id")
	api := fs.String("api", "", "only this API: ollama, openai, anthropic or responses")
	asJSON := fs.Bool("json", false, "print JSON")
	asCSV := fs.Bool("csv", false, "print CSV")
	if err := parse(fs, args); err != nil {
		return err
	}
	if *asJSON && *asCSV {
		fmt.Fprintln(stderr, "--json and --csv exclude each other")
		return errUsage
	}
	if *oldKey != "" {
		fmt.Fprintln(stderr, "droverctl usage: --key is deprecated, use --key-id")
		if *keyID != "" && *keyID != *oldKey {
			fmt.Fprintln(stderr, "--key-id and its deprecated name --key name different keys")
			return errUsage
		}
		*keyID = *oldKey
	}
	now := time.Now().UTC()
	q := chstore.UsageQuery{Model: *model, Endpoint: *endpoint, APIKey: *keyID, API: *api}
	var err error
	if q.Since, err = analytics.ParseTime(*since, now); err != nil {
		return fmt.Errorf("--since: %w", err)
	}
	if q.Until, err = analytics.ParseTime(*until, now); err != nil {
		return fmt.Errorf("--until: %w", err)
	}
	for _, g := range strings.Split(*groupBy, ",") {
		if g = strings.TrimSpace(g); g != "" {
			d, err := chstore.ParseDimension(g)
			if err != nil {
				return fmt.Errorf("--group-by: %w", err)
			}
			q.GroupBy = append(q.GroupBy, d)
		}
	}
	if *bucket != "" {
		if q.Bucket, err = analytics.ParseBucket(*bucket); err != nil {
			return fmt.Errorf("--bucket: %w", err)
		}
	}
	store, err := common.openStore()
	if err != nil {
		return err
	}
	defer store.Close()
	rows, err := store.Usage(ctx, q)
	if err != nil {
		return err
	}
	switch {
	case *asJSON:
		if rows == nil {
			rows = []chstore.UsageRow{}
		}
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(rows)
	case *asCSV:
		return writeCSV(stdout, q, rows)
	}
	return writeTable(stdout, q, rows)
}

// columns lists the output columns for q: bucket, the grouped dimensions,
// then the measures.
func columns(q chstore.UsageQuery) []string {
	var cols []string
	if q.Bucket != 0 {
		cols = append(cols, "bucket")
	}
	for _, d := range q.GroupBy {
		cols = append(cols, string(d))
	}
	return append(cols, "requests", "errors", "input_tokens", "output_tokens", "total_tokens")
}

func cells(q chstore.UsageQuery, r chstore.UsageRow) []string {
	var out []string
	if q.Bucket != 0 {
		out = append(out, r.Bucket.UTC().Format(time.RFC3339))
	}
	for _, d := range q.GroupBy {
		switch d {
		case chstore.ByModel:
			out = append(out, r.Model)
		case chstore.ByEndpoint:
			out = append(out, r.Endpoint)
		case chstore.ByAPIKey:
			out = append(out, r.APIKey)
		case chstore.ByAPI:
			out = append(out, r.API)
		}
	}
	for _, n := range []uint64{r.Requests, r.Errors, r.InputTokens, r.OutputTokens, r.TotalTokens} {
		out = append(out, strconv.FormatUint(n, 10))
	}
	return out
}

func writeCSV(w io.Writer, q chstore.UsageQuery, rows []chstore.UsageRow) error {
	cw := csv.NewWriter(w)
	_ = cw.Write(columns(q))
	for _, r := range rows {
		_ = cw.Write(cells(q, r))
	}
	cw.Flush()
	return cw.Error()
}

func writeTable(w io.Writer, q chstore.UsageQuery, rows []chstore.UsageRow) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	cols := columns(q)
	fmt.Fprintln(tw, strings.ToUpper(strings.Join(cols, "\t"))+"\t")
	var total chstore.UsageRow
	for _, r := range rows {
		fmt.Fprintln(tw, strings.Join(cells(q, r), "\t")+"\t")
		total.Requests += r.Requests
		total.Errors += r.Errors
		total.InputTokens += r.InputTokens
		total.OutputTokens += r.OutputTokens
		total.TotalTokens += r.TotalTokens
	}
	if len(rows) > 1 {
		label := make([]string, len(cols)-5)
		if len(label) > 0 {
			label[0] = "TOTAL"
		}
		tail := cells(chstore.UsageQuery{}, total)
		fmt.Fprintln(tw, strings.Join(append(label, tail...), "\t")+"\t")
	}
	if len(rows) == 0 {
		fmt.Fprintln(tw, "(no usage in this window)")
	}
	return tw.Flush()
}
