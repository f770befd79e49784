package usage

import "sync"

// Totals is an in-process sink that keeps token totals per endpoint and
// model, for /api/usage on this replica.
type Totals struct {
	mu sync.Mutex // guards byKey
	// byKey maps endpoint -> model -> counts.
	byKey map[string]map[string]*Count
}

// Count is what Totals keeps per endpoint and model.
type Count struct {
	Requests     int64 `json:"requests"`
	Errors       int64 `json:"errors"`
	InputTokens  int64 `json:"input_tokens"`
	OutputTokens int64 `json:"output_tokens"`
	// UnknownTokens counts requests whose backend reported no counts.
	UnknownTokens int64 `json:"unknown_tokens"`
}

// NewTotals returns an empty sink.
func NewTotals() *Totals { return &Totals{byKey: map[string]map[string]*Count{}} }

// Record adds one event. It takes a short lock and never blocks on I/O.
func (t *Totals) Record(e Event) {
	if e.Endpoint == "" {
		return // never reached a backend
	}
	in, out, known := e.Tokens()
	t.mu.Lock()
	defer t.mu.Unlock()
	m := t.byKey[e.Endpoint]
	if m == nil {
		m = map[string]*Count{}
		t.byKey[e.Endpoint] = m
	}
	c := m[e.Model]
	if c == nil {
		c = &Count{}
		m[e.Model] = c
	}
	c.Requests++
	if e.Error {
		c.Errors++
	}
	c.InputTokens += in
	c.OutputTokens += out
	if !known && !e.Error {
		c.UnknownTokens++
	}
}

// Snapshot copies the totals.
func (t *Totals) Snapshot() map[string]map[string]Count {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make(map[string]map[string]Count, len(t.byKey))
	for ep, models := range t.byKey {
		out[ep] = make(map[string]Count, len(models))
		for m, c := range models {
			out[ep][m] = *c
		}
	}
	return out
}

// Sinks hands each event to every sink in order.
type Sinks []Sink

// Record forwards e.
func (t Sinks) Record(e Event) {
	for _, s := range t {
		s.Record(e)
	}
}
