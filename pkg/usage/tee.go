package usage

// Tee returns a Sink that records every event into each of sinks in turn,
// for example the JetStream publisher and the replica's live totals. Each
// sink's Record is non-blocking, so Tee is too. Nil sinks are skipped.
func Tee(sinks ...Sink) Sink {
	var t tee
	for _, s := range sinks {
		if s != nil {
			t = append(t, s)
		}
	}
	if len(t) == 1 {
		return t[0]
	}
	return t
}

type tee []Sink

func (t tee) Record(ev Event) {
	for _, s := range t {
		s.Record(ev)
	}
}

// SinkFunc adapts a function to Sink.
type SinkFunc func(Event)

// Record calls f(ev).
func (f SinkFunc) Record(ev Event) { f(ev) }
