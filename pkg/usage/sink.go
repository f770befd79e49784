package usage

// Sink receives finished requests. Record must not block the request path:
// implementations queue and return.
type Sink interface {
	Record(Event)
}

// Sinks hands each event to every sink in order; it blocks no more than
// they do.
type Sinks []Sink

// Record forwards e.
func (t Sinks) Record(e Event) {
	for _, s := range t {
		s.Record(e)
	}
}
