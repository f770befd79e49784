package usage

import "sync"

// Totals is an in-process sink that keeps token totals per endpoint and
// model, for /api/usage on this replica.
type Totals struct {
	mu sync.Mutex // guards byKey
	// byKey maps endpoint -> model -> counts.
	byKey map[string]map[string]*Count
}

// NewTotals returns an empty sink.
func NewTotals() *Totals { return &Totals{byKey: map[string]map[string]*Count{}} }

// Record adds one event that reached a backend, by Event.Count. It takes a
// short lock and never blocks on I/O.
func (t *Totals) Record(e Event) {
	if e.Endpoint == "" {
		return // never reached a backend
	}
	d := e.Count()
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
	c.Add(d)
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
