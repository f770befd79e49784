package usage

// Count is what a set of events adds up to. Every total Drover shows is a
// sum of Event.Count: this replica's (Totals), the fleet's (live totals) and
// ClickHouse's token_usage_minute, whose materialized view
// (schemas/clickhouse/0003_token_usage_minute.sql) sums the same rule over
// the columns chstore.InsertEvents writes.
type Count struct {
	Requests     int64 `json:"requests"`
	Errors       int64 `json:"errors"`
	InputTokens  int64 `json:"input_tokens"`
	OutputTokens int64 `json:"output_tokens"`
	// UnknownTokens counts requests whose backend did not report both
	// counts, errors included; their missing counts add zero above.
	UnknownTokens int64 `json:"unknown_tokens"`
}

// Count is how e adds to a total: one request; one error if e.Error; the
// token counts the backend reported (nil adds zero, and so does a negative
// count, which Validate rejects anyway; one over MaxTokens adds MaxTokens);
// and one unknown unless both counts were reported.
func (e *Event) Count() Count {
	in, out, known := e.Tokens()
	c := Count{Requests: 1, InputTokens: ClampTokens(in), OutputTokens: ClampTokens(out)}
	if e.Error {
		c.Errors = 1
	}
	if !known {
		c.UnknownTokens = 1
	}
	return c
}

// Add adds d to c, saturating rather than wrapping (counts are never
// negative).
func (c *Count) Add(d Count) {
	c.Requests = addSat(c.Requests, d.Requests)
	c.Errors = addSat(c.Errors, d.Errors)
	c.InputTokens = addSat(c.InputTokens, d.InputTokens)
	c.OutputTokens = addSat(c.OutputTokens, d.OutputTokens)
	c.UnknownTokens = addSat(c.UnknownTokens, d.UnknownTokens)
}

// TotalTokens is input plus output, as token_usage_minute.total_tokens.
func (c Count) TotalTokens() int64 { return addSat(c.InputTokens, c.OutputTokens) }
