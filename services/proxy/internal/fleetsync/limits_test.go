package fleetsync

import (
	"strings"
	"testing"
	"time"

	"github.com/droverhq/drover/pkg/config"
)

func TestLimitsFor(t *testing.T) {
	cfg, err := config.FromStruct(&config.Config{
		Routing: config.Routing{MaxConcurrency: 4, Queue: config.Queue{MaxLength: 100}},
		Backends: []config.Backend{
			{URL: "http://gpu1:11434"},
			{Name: "big", URL: "http://gpu2:11434", MaxConcurrency: 16},
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	l := LimitsFor(cfg)
	if l.MaxInFlight != 16 || l.MaxQueue != 100 || strings.Join(l.Backends, ",") != "gpu1:11434,big" {
		t.Fatalf("limits %+v, want the largest cap 16, queue 100 and both backends by name", l)
	}
}

// Every way a count message can be unbelievable, and what is still
// believed: a peer's counts within the largest cap, and a peer naming a
// backend this replica does not route to (its entry alone is left out).
func TestLimitsCheck(t *testing.T) {
	l := newLimits(Limits{Backends: []string{"a", "b"}, MaxInFlight: 8, MaxQueue: 10, MaxEntries: 3}, time.Second)
	ok := func(n, d int) count { return count{Backend: "a", Model: "m", N: n, D: d} }
	cases := []struct {
		name    string
		msg     countMsg
		err     string // "" when believed
		kept    int
		unknown int
	}{
		{"within limits", countMsg{Replica: "r2", TTLms: 3000, Counts: []count{ok(8, 18), {Backend: "b", Model: "m", N: 1, D: 1}}}, "", 2, 0},
		{"no ttl (default)", countMsg{Replica: "r2", Counts: []count{ok(1, 1)}}, "", 1, 0},
		{"ttl of five heartbeats", countMsg{Replica: "r2", TTLms: 5000}, "", 0, 0},
		{"unknown backend left out", countMsg{Replica: "r2", Counts: []count{ok(1, 1), {Backend: "elsewhere", Model: "m", N: 1}}}, "", 1, 1},
		{"ghost: 1,000 in flight", countMsg{Replica: "ghost", Counts: []count{ok(1000, 1000)}}, "above the largest cap 8", 0, 0},
		{"one above the cap", countMsg{Replica: "r2", Counts: []count{ok(9, 9)}}, "above the largest cap 8", 0, 0},
		{"negative in flight", countMsg{Replica: "r2", Counts: []count{ok(-5, 0)}}, "negative", 0, 0},
		{"negative demand", countMsg{Replica: "r2", Counts: []count{ok(0, -1)}}, "negative", 0, 0},
		{"demand above cap and queue, cut", countMsg{Replica: "r2", Counts: []count{ok(1, 1_000_000)}}, "", 1, 0},
		{"ttl of an hour", countMsg{Replica: "r2", TTLms: 3_600_000}, "ttl_ms 3600000 outside 0..5000", 0, 0},
		{"ttl just too long", countMsg{Replica: "r2", TTLms: 5001}, "outside", 0, 0},
		{"negative ttl", countMsg{Replica: "r2", TTLms: -1}, "outside", 0, 0},
		{"the same key twice", countMsg{Replica: "r2", Counts: []count{ok(8, 8), ok(8, 8)}}, "listed twice", 0, 0},
		{"too many entries", countMsg{Replica: "r2", Counts: []count{ok(1, 1), ok(1, 1), ok(1, 1), ok(1, 1)}}, "4 entries, more than 3", 0, 0},
		{"no name", countMsg{Counts: []count{ok(1, 1)}}, "no replica name", 0, 0},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			msg := c.msg
			unknown, err := l.check(&msg)
			switch {
			case c.err == "" && err != nil:
				t.Fatalf("rejected: %v", err)
			case c.err != "" && (err == nil || !strings.Contains(err.Error(), c.err)):
				t.Fatalf("error %v, want one saying %q", err, c.err)
			case c.err == "" && (len(msg.Counts) != c.kept || unknown != c.unknown):
				t.Fatalf("kept %d entries with %d unknown, want %d and %d", len(msg.Counts), unknown, c.kept, c.unknown)
			}
			for _, e := range msg.Counts {
				if c.err == "" && e.D > 18 {
					t.Fatalf("demand %d kept, above the largest cap plus the queue (18)", e.D)
				}
			}
		})
	}
}

// Invalidations from elsewhere are applied once per interval per backend:
// the first at once, the rest of a burst merged into one at the end of the
// interval; other backends are not held back by a busy one.
func TestCoalescer(t *testing.T) {
	var applied [][]string
	c := newCoalescer(time.Second, func(b ...string) { applied = append(applied, b) })
	t0 := time.Unix(1000, 0)
	if held := c.offer(t0, []string{"a"}); held != 0 {
		t.Fatalf("the first invalidation was held back")
	}
	for i := range 100 {
		c.offer(t0.Add(time.Duration(i)*time.Millisecond), []string{"a"})
	}
	if held := c.offer(t0.Add(200*time.Millisecond), []string{"b", "a"}); held != 1 {
		t.Fatalf("held %d, want only a", held)
	}
	if next := c.flush(t0.Add(500 * time.Millisecond)); next != 500*time.Millisecond {
		t.Fatalf("next flush in %s, want 500ms", next)
	}
	if next := c.flush(t0.Add(time.Second)); next != 0 {
		t.Fatalf("a flushed, yet something is still pending (%s)", next)
	}
	want := [][]string{{"a"}, {"b"}, {"a"}}
	if len(applied) != len(want) {
		t.Fatalf("applied %q, want %q", applied, want)
	}
	for i := range want {
		if strings.Join(applied[i], ",") != strings.Join(want[i], ",") {
			t.Fatalf("applied %q, want %q", applied, want)
		}
	}
	// Invalidating everything when the backends are not known.
	applied = nil
	c.offer(t0.Add(3*time.Second), []string{allBackends})
	if len(applied) != 1 || len(applied[0]) != 0 {
		t.Fatalf("an invalidation of everything applied as %q, want one call with no names", applied)
	}
}
