package affinity

import (
	"fmt"
	"log/slog"
	"maps"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"go.uber.org/goleak"

	"github.com/droverhq/drover/pkg/config"
	"github.com/droverhq/drover/testkit/natstest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// counts is an Observe hook's tally.
type counts struct {
	mu    sync.Mutex
	n, by map[string]int
}

func newCounts() *counts { return &counts{n: map[string]int{}, by: map[string]int{}} }

func (c *counts) observe(dir string, n, bytes int) {
	c.mu.Lock()
	c.n[dir] += n
	c.by[dir] += bytes
	c.mu.Unlock()
}

func (c *counts) get(dir string) (n, bytes int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n[dir], c.by[dir]
}

func connect(t testing.TB, url string) *nats.Conn {
	t.Helper()
	nc, err := nats.Connect(url, nats.NoEcho())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	return nc
}

func waitFor(t testing.TB, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

type replica struct {
	index  *Index
	sharer *Sharer
	counts *counts
	slots  *Slots
}

func startReplica(t *testing.T, url, name string, interval time.Duration) *replica {
	t.Helper()
	r := &replica{index: NewIndex(1000, time.Hour), counts: newCounts(), slots: NewSlots(time.Hour, 1000)}
	var err error
	r.sharer, err = NewSharer(SharerOptions{Conn: connect(t, url), Replica: name, Index: r.index, Interval: interval,
		Known: func(b string) bool { return b == "a" || b == "b" }, Observe: r.counts.observe, Log: slog.New(slog.DiscardHandler),
		Slots: func(replica string, events []SlotEvent) { r.slots.Apply(replica, events, time.Now()) }})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.sharer.Close)
	return r
}

// What one replica's index learns, the other's does, over real NATS;
// many inserts within one interval travel as one message.
func TestSharingOverNATS(t *testing.T) {
	ns := natstest.Start(t)
	r1 := startReplica(t, ns.URL(), "r1", 200*time.Millisecond)
	r2 := startReplica(t, ns.URL(), "r2", 200*time.Millisecond)
	a := Target{"a", "llama3.2"}
	now := time.Now()
	var prompts []*Prompt
	for i := range 20 {
		p := chain(uint64(1000*i), 8)
		p.Session = uint64(5000 + i)
		prompts = append(prompts, p)
		if fresh := r1.index.Insert(a, p, now, time.Minute, nil); len(fresh) > 0 {
			r1.sharer.Inserted(a, fresh)
		}
	}
	waitFor(t, "r2 to learn r1's prompts", func() bool {
		for _, p := range prompts {
			if m := r2.index.Lookup(a, p, time.Now()); m.Blocks != 8 || m.Session == 0 {
				return false
			}
		}
		return true
	})
	sent, bytes := r1.counts.get("sent")
	// The first insert goes at once, the other 19 wait out the interval
	// together: two messages, 9 hashes of 8 bytes per prompt plus names.
	if sent > 3 {
		t.Errorf("%d messages for 20 inserts within one interval", sent)
	}
	if bytes > 20*9*8+100*sent {
		t.Errorf("%d bytes for 180 hashes", bytes)
	}
	if got, _ := r2.counts.get("received"); got != sent {
		t.Errorf("r2 received %d of %d messages", got, sent)
	}
	// Nothing known is re-sent.
	if fresh := r1.index.Insert(a, prompts[0], now, time.Minute, nil); len(fresh) != 0 {
		t.Errorf("a known prompt is re-sent: %v", fresh)
	}
	// The other way round, for another backend.
	b := Target{"b", "llama3.2"}
	r2.sharer.Inserted(b, r2.index.Insert(b, prompts[3], now, time.Minute, nil))
	waitFor(t, "r1 to learn r2's", func() bool { return r1.index.Lookup(b, prompts[3], time.Now()).Blocks == 8 })
}

// A message naming a backend this replica does not know, or malformed,
// is rejected whole and counted; the index is untouched.
func TestSharingRejects(t *testing.T) {
	ns := natstest.Start(t)
	r := startReplica(t, ns.URL(), "r1", 10*time.Millisecond)
	nc := connect(t, ns.URL())
	unknown := encode("evil", nil, nil, map[Target][]uint64{{"elsewhere", "m"}: {1, 2, 3}})[0]
	unknownLoad := encode("evil", map[string]int64{"elsewhere": 5}, nil, nil)[0]
	for _, msg := range [][]byte{unknown, unknownLoad, {9, 9, 9}, {wireVersion, 2, 'r', 'x', 0, 1, 'a', 1, 'm', 5, 1, 2}} {
		if err := nc.Publish(config.SubjectAffinity, msg); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, "four rejections", func() bool { n, _ := r.counts.get("rejected"); return n == 4 })
	if r.index.Len() != 0 || r.sharer.Tokens("elsewhere") != 0 {
		t.Fatalf("%d entries, %d tokens from rejected messages", r.index.Len(), r.sharer.Tokens("elsewhere"))
	}
}

// The queue in front of the sender is bounded: beyond it hashes are
// dropped and counted, never blocking the request path.
func TestSharingQueueBound(t *testing.T) {
	ns := natstest.Start(t)
	r := &replica{index: NewIndex(10, time.Hour), counts: newCounts()}
	s, err := NewSharer(SharerOptions{Conn: connect(t, ns.URL()), Replica: "r", Index: r.index, Interval: time.Hour, MaxPending: 100, Observe: r.counts.observe})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	s.Inserted(Target{"a", "m"}, []uint64{1}) // goes at once; the next wait an hour
	waitFor(t, "the first message", func() bool { n, _ := r.counts.get("sent"); return n == 1 })
	for i := range 30 {
		s.Inserted(Target{"a", "m"}, make([]uint64, 10+i%2))
	}
	if n, _ := r.counts.get("dropped"); n != 30*10+15-100 {
		t.Fatalf("dropped %d hashes, want %d", n, 30*10+15-100)
	}
}

func TestEncodeDecode(t *testing.T) {
	big := make([]uint64, maxMessageSize/8+10)
	for i := range big {
		big[i] = uint64(i)
	}
	in := map[Target][]uint64{{"a", "m"}: {1, 2}, {"b", "n:latest"}: big}
	loads := map[string]int64{"a": 7, "b": 1 << 33}
	events := []SlotEvent{{T: Target{"a", "m"}, ID: 1 << 40, Slots: 4, Chain: []uint64{5, 6, 7}}, {T: Target{"b", "n:latest"}, ID: 3},
		{T: Target{"a", "m"}, Kind: SlotJoin, ID: 1<<63 + 9, Owner: 1 << 62, At: 1_700_000_000_000_000, Until: 1_700_000_000_400_000},
		{T: Target{"a", "m"}, ID: 11, Slots: 4, Chain: []uint64{8}, Ticket: 1<<63 + 9, At: 1_700_000_000_300_000}, {T: Target{"a", "m"}, Kind: SlotLeave, ID: 1<<63 + 9},
		{T: Target{"a", "m"}, ID: 12, Slots: 4, Chain: []uint64{}}}
	for i := range 300 { // more than one message's worth
		events = append(events, SlotEvent{T: Target{"a", "m"}, ID: uint64(i), Slots: 4, Chain: []uint64{uint64(i)}})
	}
	msgs := encode("r", loads, events, in)
	if len(msgs) < 2 {
		t.Fatalf("%d messages for more than the size bound", len(msgs))
	}
	got := map[Target][]uint64{}
	var gotEvents []SlotEvent
	for _, m := range msgs {
		if len(m) > maxMessageSize {
			t.Fatalf("a message of %d bytes", len(m))
		}
		rep, l, evs, groups, err := decodeWire(m)
		if err != nil || rep != "r" {
			t.Fatal(rep, err)
		}
		gotEvents = append(gotEvents, evs...)
		if l != nil {
			if fmt.Sprint(l) != fmt.Sprint(loads) || len(groups)+len(evs) == 0 {
				t.Fatalf("loads %v, %d groups and %d events in the first message", l, len(groups), len(evs))
			}
			loads = nil // only once
		}
		for _, g := range groups {
			got[g.t] = append(got[g.t], g.hashes...)
		}
	}
	if fmt.Sprint(got) != fmt.Sprint(in) || loads != nil || fmt.Sprint(gotEvents) != fmt.Sprint(events) {
		t.Fatal("decoded differs from encoded")
	}
}

// A replica starts without NATS: the sharer does not wait for a
// connection, and shares once NATS is there.
func TestSharerStartsWithoutNATS(t *testing.T) {
	ns := natstest.Start(t)
	ns.Stop()
	nc, err := nats.Connect(ns.URL(), nats.RetryOnFailedConnect(true), nats.MaxReconnects(-1), nats.ReconnectWait(20*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	r := &replica{index: NewIndex(100, time.Hour), counts: newCounts()}
	s, err := NewSharer(SharerOptions{Conn: nc, Replica: "offline", Index: r.index, Interval: 10 * time.Millisecond, Observe: r.counts.observe})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	// (That it did not wait for NATS is TestKeysStartWithoutNATS's check:
	// the whole replica starts in well under NATS's 10 s flush timeout.)
	ns.Restart()
	other := startReplica(t, ns.URL(), "online", 10*time.Millisecond)
	waitFor(t, "the offline replica to connect", nc.IsConnected)
	a := Target{"a", "m"}
	// Resent until the subscription is known to be in place.
	waitFor(t, "the other replica to learn it", func() bool {
		s.Inserted(a, []uint64{42})
		time.Sleep(20 * time.Millisecond)
		return other.index.Lookup(a, &Prompt{Chain: []uint64{42}}, time.Now()).Blocks == 1
	})
}

// Replicas share their tokens in flight: what one reports the other
// sums per backend, updates on change, and forgets when it stops.
func TestSharingLoads(t *testing.T) {
	ns := natstest.Start(t)
	var mu sync.Mutex
	loads := map[string]int64{}
	setLoad := func(b string, n int64) {
		mu.Lock()
		defer mu.Unlock()
		if n == 0 {
			delete(loads, b)
		} else {
			loads[b] = n
		}
	}
	r1 := &replica{index: NewIndex(10, time.Hour), counts: newCounts()}
	s1, err := NewSharer(SharerOptions{Conn: connect(t, ns.URL()), Replica: "r1", Index: r1.index, Interval: 5 * time.Millisecond, Observe: r1.counts.observe,
		Loads: func() map[string]int64 { mu.Lock(); defer mu.Unlock(); return maps.Clone(loads) }})
	if err != nil {
		t.Fatal(err)
	}
	r2 := startReplica(t, ns.URL(), "r2", 5*time.Millisecond)
	setLoad("a", 3000)
	waitFor(t, "r2 to see r1's load", func() bool { return r2.sharer.Tokens("a") == 3000 })
	setLoad("a", 100)
	setLoad("b", 50)
	waitFor(t, "r2 to see the change", func() bool { return r2.sharer.Tokens("a") == 100 && r2.sharer.Tokens("b") == 50 })
	// Unchanged loads go out only every heartbeat (1 s): a steady replica
	// sends about one message a second, not one per interval.
	sent, bytes := r1.counts.get("sent")
	s1.Close()
	waitFor(t, "r2 to forget r1 when it stops", func() bool { return r2.sharer.Tokens("a") == 0 && r2.sharer.Tokens("b") == 0 })
	t.Logf("r1 sent %d messages, %d bytes", sent, bytes)
}

// A replica that falls silent is forgotten after three heartbeats.
func TestSharingLoadsExpire(t *testing.T) {
	s := &Sharer{opts: SharerOptions{Heartbeat: time.Second}, peers: map[string]peerLoads{}}
	t0 := time.Now()
	s.setPeer("r1", map[string]int64{"a": 5}, t0)
	s.setPeer("r3", map[string]int64{"a": 2}, t0.Add(2*time.Second))
	if s.Tokens("a") != 7 {
		t.Fatalf("sum %d", s.Tokens("a"))
	}
	s.expire(t0.Add(3*time.Second + time.Millisecond))
	if s.Tokens("a") != 2 {
		t.Fatalf("after r1's expiry: %d", s.Tokens("a"))
	}
}

// A replica's slot takes and releases reach the other's slot model over
// real NATS: the other sees the slot holding the prompt busy, then free.
func TestSharingSlots(t *testing.T) {
	ns := natstest.Start(t)
	r1 := startReplica(t, ns.URL(), "r1", 10*time.Millisecond)
	r2 := startReplica(t, ns.URL(), "r2", 10*time.Millisecond)
	a := Target{"a", "m"}
	p := chain(100, 8)
	r1.slots.Take(a, 4, p, time.Now())
	r1.sharer.SlotEvent(SlotEvent{T: a, ID: 7, Slots: 4, Chain: p.Chain})
	waitFor(t, "r2 to model r1's take", func() bool { return r2.slots.Held(a, p, time.Now()) == 8 })
	if r2.slots.Free(a, p, time.Now()) != 0 {
		t.Fatal("r1's busy slot is free in r2's model")
	}
	r1.sharer.SlotEvent(SlotEvent{T: a, ID: 7})
	waitFor(t, "r2 to model r1's release", func() bool { return r2.slots.Free(a, p, time.Now()) == 8 })
}

// Slot events do not wait out the interval (an hour here): each goes one
// SlotInterval after the previous message, and takes the index inserts
// waiting for the interval along.
func TestSharingSlotsPrompt(t *testing.T) {
	ns := natstest.Start(t)
	r1 := startReplica(t, ns.URL(), "r1", time.Hour)
	r2 := startReplica(t, ns.URL(), "r2", time.Hour)
	a := Target{"a", "m"}
	now := time.Now()
	p, q := chain(100, 8), chain(200, 8)
	r1.sharer.Inserted(a, r1.index.Insert(a, p, now, time.Minute, nil))
	waitFor(t, "r2 to learn r1's first insert", func() bool { return r2.index.Lookup(a, p, time.Now()).Blocks == 8 })
	r1.slots.Take(a, 4, p, time.Now())
	r1.sharer.SlotEvent(SlotEvent{T: a, ID: 7, Slots: 4, Chain: p.Chain})
	waitFor(t, "r2 to model r1's take", func() bool { return r2.slots.Held(a, p, time.Now()) == 8 })
	r1.sharer.Inserted(a, r1.index.Insert(a, q, now, time.Minute, nil))
	r1.sharer.SlotEvent(SlotEvent{T: a, ID: 7})
	waitFor(t, "r2 to model r1's release", func() bool { return r2.slots.Free(a, p, time.Now()) == 8 })
	waitFor(t, "r2 to learn the insert sent with the release", func() bool { return r2.index.Lookup(a, q, time.Now()).Blocks == 8 })
	if sent, _ := r1.counts.get("sent"); sent != 3 {
		t.Errorf("%d messages for an insert, a take and a release with an insert", sent)
	}
}
