package fleetsync

import (
	"strings"
	"testing"
	"time"

	"github.com/droverhq/drover/pkg/config"
	"github.com/droverhq/drover/services/proxy/internal/routing"
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

// The per-queue loads of a count (key and class) are bounded like the
// counts: a forger cannot claim queues no replica could have, an unlimited
// weight or a queue's waiting beyond the queue's length.
func TestLimitsCheckQueues(t *testing.T) {
	l := newLimits(Limits{MaxInFlight: 8, MaxQueue: 10, MaxTenants: 3, MaxWeight: 50}, time.Second)
	q := func(key, class string, w, n, waiting int) tenantCount {
		return tenantCount{Key: key, Class: class, Weight: w, N: n, Q: waiting}
	}
	withOldest := func(t tenantCount, at int64) tenantCount { t.Oldest = at; return t }
	entry := func(n int, ts ...tenantCount) count { return count{Backend: "a", Model: "m", N: n, D: n + 10, T: ts} }
	cases := []struct {
		name string
		c    []count
		err  string
	}{
		{"within limits", []count{entry(3, q("a", "interactive", 3, 2, 4), q("b", "batch", 1, 1, 6))}, ""},
		{"the same queue twice", []count{entry(2, q("a", "batch", 1, 1, 0), q("a", "batch", 1, 1, 0))}, "listed twice"},
		{"one key in two classes", []count{entry(2, q("a", "batch", 1, 1, 0), q("a", "interactive", 1, 1, 0))}, ""},
		{"unknown class", []count{entry(1, q("a", "urgent", 1, 1, 0))}, "unknown class"},
		{"no key id", []count{entry(1, q("", "batch", 1, 1, 0))}, "key id"},
		{"a key id no key can have", []count{entry(1, q(strings.Repeat("k", 65), "batch", 1, 1, 0))}, "key id"},
		{"negative waiting", []count{entry(1, q("a", "batch", 1, 1, -1))}, "negative"},
		{"queues hold more than the pool", []count{entry(1, q("a", "batch", 1, 2, 0))}, "queues hold 2 in flight"},
		{"an oldest waiter", []count{entry(1, withOldest(q("a", "batch", 1, 1, 2), 1796570183472))}, ""},
		{"a negative oldest waiter", []count{entry(1, withOldest(q("a", "batch", 1, 1, 2), -5))}, "oldest waiter"},
		{"an oldest waiter with nobody waiting", []count{entry(1, withOldest(q("a", "batch", 1, 1, 0), 1796570183472))}, "oldest waiter"},
		{"too many queues over the message", []count{entry(1, q("a", "batch", 1, 0, 1), q("b", "batch", 1, 0, 1)), {Backend: "b", Model: "m", T: []tenantCount{q("c", "batch", 1, 0, 1), q("d", "batch", 1, 0, 1)}}}, "more than 3 queues"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			msg := countMsg{Replica: "r2", Counts: c.c}
			_, err := l.check(&msg)
			if c.err == "" && err != nil || c.err != "" && (err == nil || !strings.Contains(err.Error(), c.err)) {
				t.Fatalf("error %v, want %q", err, c.err)
			}
		})
	}
	// Weights and waiting beyond the limits are cut, not rejected.
	msg := countMsg{Replica: "r2", Counts: []count{entry(1, q("a", "batch", 1_000_000, 1, 1_000_000))}}
	if _, err := l.check(&msg); err != nil {
		t.Fatal(err)
	}
	if got := msg.Counts[0].T[0]; got.Weight != 50 || got.Q != 10 {
		t.Fatalf("kept weight %d and waiting %d, want them cut to 50 and 10", got.Weight, got.Q)
	}
}

// A replica with more queues than a message may carry sends the busiest;
// the rest count on the other side as the pool's unnamed remainder.
func TestTenantCountsKeepTheBusiest(t *testing.T) {
	ts := []routing.TenantLoad{{ID: "quiet", Waiting: 1}, {ID: "busy", Waiting: 9}, {ID: "mid", InFlight: 2, Waiting: 3}}
	got, left := tenantCounts(ts, 2)
	if len(got) != 2 || got[0].Key != "busy" || got[1].Key != "mid" || left != 0 {
		t.Fatalf("kept %+v with %d left, want busy and mid", got, left)
	}
	if got, left := tenantCounts(ts, 10); len(got) != 3 || left != 7 {
		t.Fatalf("kept %d with %d left, want all 3 and 7", len(got), left)
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
