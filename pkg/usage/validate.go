package usage

import (
	"errors"
	"fmt"
)

// Validate decides whether e is a usage event Drover stores. The aggregator
// dead-letters what it rejects, and the live fleet totals skip it, so that
// the stream adds exactly what ClickHouse holds. schemas/usage/usage.v1.json
// rejects these events too, except one whose time is the zero time (a valid
// date-time there), and is stricter elsewhere: it requires every field and
// checks types and formats.
func Validate(e Event) error {
	switch {
	case e.Schema != SchemaVersion:
		return fmt.Errorf("usage event schema %q, want %q", e.Schema, SchemaVersion)
	case e.ID == "":
		return errors.New("usage event without id")
	case e.Time.IsZero():
		return errors.New("usage event without time")
	case e.InputTokens != nil && *e.InputTokens < 0, e.OutputTokens != nil && *e.OutputTokens < 0:
		return errors.New("usage event with negative token counts")
	}
	return nil
}
