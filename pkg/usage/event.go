// Package usage defines the usage event every finished request produces and
// the Sink interface the proxy hands it to. The wire form is fixed by
// schemas/usage/usage.v1.json; Event is its Go mirror.
package usage

import (
	"time"
)

// SchemaVersion is the value of Event.Schema for events in this format.
const SchemaVersion = "usage.v1"

// Event is one finished request as seen by a proxy replica. Token counts are
// what the backend reported; a count the backend did not report is nil
// ("unknown"), never zero.
type Event struct {
	Schema string `json:"schema"`
	// ID is unique per request attempt that reached the client; it is the
	// JetStream Nats-Msg-Id and the ClickHouse row id (UUIDv7, text form).
	ID string `json:"id"`
	// Time is taken once, when the response ended (UTC). Minute buckets
	// truncate it.
	Time     time.Time `json:"time"`
	Replica  string    `json:"replica,omitempty"`
	Endpoint string    `json:"endpoint"`
	// Model is the public model name the client asked for; BackendModel is the
	// name on the backend when an alias mapped it to something else.
	Model        string `json:"model"`
	BackendModel string `json:"backend_model,omitempty"`
	APIKey       string `json:"api_key"`
	// Route is the client-facing route, e.g. "/api/chat" or "/v1/chat/completions".
	Route string `json:"route"`
	// API is the API family the client spoke (APIOf(Route)): "ollama",
	// "openai", "anthropic" or "responses". Optional on the wire: events
	// from before it existed leave it empty and readers derive it from
	// Route with APIOf.
	API    string `json:"api,omitempty"`
	Status int    `json:"status"`
	// Error is true for a request that did not complete successfully
	// (non-2xx, backend failure mid-stream, client cancel).
	Error        bool   `json:"error"`
	InputTokens  *int64 `json:"input_tokens"`
	OutputTokens *int64 `json:"output_tokens"`
	Stream       bool   `json:"stream"`
	// TTFBMs and DurationMs are measured from the moment the request reached
	// Drover.
	TTFBMs     float64 `json:"ttfb_ms"`
	DurationMs float64 `json:"duration_ms"`
	Attempts   int     `json:"attempts"`
	// Partial marks a streamed answer that ended early (the backend cut it,
	// or the client left) before the backend reported its counts:
	// OutputTokens is then the content chunks the client was sent, and
	// InputTokens what the backend reported before the end, if anything.
	// Optional on the wire (omitted when false): events from before it
	// existed read as whole.
	Partial bool `json:"partial,omitempty"`
}

// Tokens returns the input and output counts with unknown as zero, and
// whether both were known.
func (e *Event) Tokens() (in, out int64, known bool) {
	known = e.InputTokens != nil && e.OutputTokens != nil
	if e.InputTokens != nil {
		in = *e.InputTokens
	}
	if e.OutputTokens != nil {
		out = *e.OutputTokens
	}
	return in, out, known
}

// Int64 returns a pointer to v, for building events.
func Int64(v int64) *int64 { return &v }
