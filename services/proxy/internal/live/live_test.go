package live

import (
	"bufio"
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/droverhq/drover/pkg/usage"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		goleak.IgnoreTopFunction("internal/poll.runtime_pollWait"),
		goleak.IgnoreTopFunction("net/http.(*persistConn).writeLoop"),
		goleak.IgnoreTopFunction("net/http.(*persistConn).readLoop"),
	)
}

// everything is an admin's scope.
var everything = scope{all: true}

// counter is a fake router whose in-flight count the test moves.
type counter struct{ n atomic.Int64 }

func (c *counter) InFlight() map[string]map[string]int {
	n := int(c.n.Load())
	if n == 0 {
		return map[string]map[string]int{}
	}
	return map[string]map[string]int{"a": {"tiny": n}}
}

func newLive(t *testing.T, opts Options) (*Live, string) {
	t.Helper()
	l := New(opts)
	hs := httptest.NewServer(http.HandlerFunc(l.ServeStream))
	t.Cleanup(func() {
		hs.CloseClientConnections()
		hs.Close()
		l.Close()
	})
	return l, hs.URL
}

// stream is one SSE client.
type stream struct {
	cancel context.CancelFunc
	lines  chan string
	done   chan struct{}
}

func openStream(t *testing.T, url string) *stream {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	if ct := resp.Header.Get("Content-Type"); ct != "text/event-stream" {
		t.Fatalf("content type %q", ct)
	}
	s := &stream{cancel: cancel, lines: make(chan string, 1024), done: make(chan struct{})}
	go func() {
		defer close(s.done)
		defer resp.Body.Close()
		sc := bufio.NewScanner(resp.Body)
		sc.Buffer(nil, 1<<20)
		for sc.Scan() {
			select {
			case s.lines <- sc.Text():
			default: // the test is not reading lines it does not need
			}
		}
	}()
	t.Cleanup(func() { cancel(); <-s.done })
	return s
}

// next returns the next snapshot (skipping comments), or fails after d.
func (s *stream) next(t *testing.T, d time.Duration) *Snapshot {
	t.Helper()
	deadline := time.After(d)
	for {
		select {
		case line := <-s.lines:
			if b, ok := strings.CutPrefix(line, "data: "); ok {
				var snap Snapshot
				if err := json.Unmarshal([]byte(b), &snap); err != nil {
					t.Fatalf("bad snapshot %q: %v", b, err)
				}
				return &snap
			}
		case <-deadline:
			t.Fatalf("no snapshot within %s", d)
		}
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// The first snapshot comes from subscribing, not from the publish loop:
// with an hour between ticks it still arrives at once.
func TestNewSubscriberGetsSnapshotAtOnce(t *testing.T) {
	var c counter
	c.n.Store(3)
	_, url := newLive(t, Options{Replica: "r1", Local: c.InFlight, Interval: time.Hour})
	snap := openStream(t, url).next(t, time.Second)
	if got := snap.UsageCounts["a"]["tiny"]; got != 3 || snap.InFlight != 3 || snap.Replica != "r1" {
		t.Fatalf("first snapshot %+v, want 3 in flight on a/tiny", snap)
	}
	// A second subscriber gets it too, while the first stays subscribed.
	if got := openStream(t, url).next(t, time.Second).UsageCounts["a"]["tiny"]; got != 3 {
		t.Fatalf("second subscriber got %d", got)
	}
}

// changeConstantly moves c until the test ends, like a busy router.
func changeConstantly(tb testing.TB, c *counter) {
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
				c.n.Add(1)
				// Pace the changes like requests coming and going (not
				// waiting for anything).
				time.Sleep(50 * time.Microsecond)
			}
		}
	}()
	tb.Cleanup(func() { close(stop); wg.Wait() })
}

// Counts that change all the time are published as a stream of snapshots
// in order, each newer than the last, and the stream keeps up: once the
// changes stop, the final count arrives. How many snapshots an Interval
// holds is BenchmarkSnapshotsUnderConstantChange's to measure.
func TestUpdatesAreCoalesced(t *testing.T) {
	var c counter
	changeConstantly(t, &c)
	_, url := newLive(t, Options{Local: c.InFlight, Interval: 10 * time.Millisecond})
	s := openStream(t, url)
	first := s.next(t, time.Second)
	last, lastCount := first.Seq, first.UsageCounts["a"]["tiny"]
	check := func(snap *Snapshot) {
		t.Helper()
		n := snap.UsageCounts["a"]["tiny"]
		if snap.Seq <= last || n <= lastCount {
			t.Fatalf("snapshot %d (count %d) after snapshot %d (count %d): want newer", snap.Seq, n, last, lastCount)
		}
		last, lastCount = snap.Seq, n
	}
	for range 5 {
		check(s.next(t, 5*time.Second))
	}
	c.n.Store(1 << 40) // beyond anything the changer reaches
	for lastCount < 1<<40 {
		check(s.next(t, 5*time.Second))
	}
}

// BenchmarkSnapshotsUnderConstantChange receives b.N snapshots of counts
// that change all the time: ns/op is the time between two snapshots, and
// intervals/snapshot (at least 1) says how well changes are coalesced to
// at most one snapshot per Interval.
func BenchmarkSnapshotsUnderConstantChange(b *testing.B) {
	var c counter
	changeConstantly(b, &c)
	const interval = 10 * time.Millisecond
	l := New(Options{Local: c.InFlight, Interval: interval})
	defer l.Close()
	sub := l.subscribe(everything)
	defer l.hub.unsubscribe(sub)
	<-sub.wake
	sub.take()
	b.ResetTimer()
	start := time.Now()
	for range b.N {
		select {
		case <-sub.wake:
			sub.take()
		case <-time.After(10 * time.Second):
			b.Fatal("no snapshot in 10s")
		}
	}
	el := time.Since(start)
	b.ReportMetric(float64(el)/float64(interval)/float64(b.N), "intervals/snapshot")
}

func TestUnchangedCountsPublishNothing(t *testing.T) {
	var c counter
	c.n.Store(1)
	_, url := newLive(t, Options{Local: c.InFlight, Interval: 10 * time.Millisecond})
	s := openStream(t, url)
	s.next(t, time.Second)
	select {
	case line := <-s.lines:
		if strings.HasPrefix(line, "data:") {
			t.Fatalf("published %q though nothing changed", line)
		}
	case <-time.After(300 * time.Millisecond):
	}
	c.n.Store(2)
	if got := s.next(t, time.Second).UsageCounts["a"]["tiny"]; got != 2 {
		t.Fatalf("after a change got %d, want 2", got)
	}
}

func TestKeepAliveComments(t *testing.T) {
	var c counter
	_, url := newLive(t, Options{Local: c.InFlight, KeepAlive: 30 * time.Millisecond})
	s := openStream(t, url)
	s.next(t, time.Second)
	deadline := time.After(time.Second)
	for {
		select {
		case line := <-s.lines:
			if line == ": keep-alive" {
				return
			}
		case <-deadline:
			t.Fatal("no keep-alive comment on an idle stream")
		}
	}
}

func TestDisconnectedSubscriberIsRemoved(t *testing.T) {
	var c counter
	l, url := newLive(t, Options{Local: c.InFlight})
	s := openStream(t, url)
	s.next(t, time.Second)
	if l.Subscribers() != 1 {
		t.Fatalf("%d subscribers, want 1", l.Subscribers())
	}
	s.cancel()
	waitFor(t, "the subscriber to be removed", func() bool { return l.Subscribers() == 0 })
}

func TestCloseEndsStreams(t *testing.T) {
	var c counter
	l, url := newLive(t, Options{Local: c.InFlight})
	s := openStream(t, url)
	s.next(t, time.Second)
	l.Close()
	select {
	case <-s.done:
	case <-time.After(2 * time.Second):
		t.Fatal("stream still open after Close")
	}
	l.Close() // twice is fine
}

// A subscriber that does not read is never waited on: publishing stays
// fast and, when it reads again, it finds only the newest snapshot.
func TestSlowSubscriberGetsLatest(t *testing.T) {
	h := newHub()
	slow, _ := h.subscribe(everything)
	start := time.Now()
	for i := range 100000 {
		h.publish(everything, []byte{byte(i), byte(i >> 8), byte(i >> 16)})
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("100000 publishes to a stalled subscriber took %s", d)
	}
	<-slow.wake
	last := 99999
	if got := slow.take(); len(got) != 3 || got[0] != byte(last) || got[1] != byte(last>>8) || got[2] != byte(last>>16) {
		t.Fatalf("slow subscriber got %v, want the last snapshot", got)
	}
	if slow.take() != nil {
		t.Fatal("a taken snapshot was delivered twice")
	}
	late, _ := h.subscribe(everything)
	if got := late.take(); got == nil || got[0] != byte(last) {
		t.Fatalf("new subscriber got %v, want the latest snapshot", got)
	}
}

// Thousands of subscribers come and go while the publisher publishes as
// fast as it can; each one that stays long enough sees the final snapshot,
// and none is left behind.
func TestHubStress(t *testing.T) {
	h := newHub()
	stop := make(chan struct{})
	var pubs atomic.Int64
	var pwg sync.WaitGroup
	pwg.Add(1)
	go func() {
		defer pwg.Done()
		for i := 0; ; i++ {
			select {
			case <-stop:
				h.publish(everything, []byte("final"))
				return
			default:
				h.publish(everything, []byte{byte(i)})
				pubs.Add(1)
			}
		}
	}()
	var wg sync.WaitGroup
	for g := range 4000 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s, _ := h.subscribe(everything)
			defer h.unsubscribe(s)
			for range g % 5 {
				select {
				case <-s.wake:
					s.take()
				case <-time.After(time.Second):
				}
			}
		}()
	}
	wg.Wait()
	stayers := make([]*sub, 200)
	for i := range stayers {
		stayers[i], _ = h.subscribe(everything)
	}
	close(stop)
	pwg.Wait()
	for _, s := range stayers {
		var got []byte
		for got == nil || string(got) != "final" {
			select {
			case <-s.wake:
				got = s.take()
			case <-time.After(2 * time.Second):
				t.Fatalf("a subscriber never saw the final snapshot (last %q)", got)
			}
		}
		h.unsubscribe(s)
	}
	if n := h.len(); n != 0 {
		t.Fatalf("%d subscribers left", n)
	}
	if pubs.Load() == 0 {
		t.Fatal("nothing was published")
	}
}

func TestUsageSnapshotLocalFallback(t *testing.T) {
	var c counter
	c.n.Store(2)
	l := New(Options{Replica: "r1", Local: c.InFlight,
		Remote: func() map[string]map[string]int { return map[string]map[string]int{"a": {"tiny": 3}, "b": {"big": 1}} }})
	defer l.Close()
	for _, ev := range []usage.Event{
		{Endpoint: "a", Model: "tiny", APIKey: "team-a", Status: 200, InputTokens: usage.Int64(5), OutputTokens: usage.Int64(7)},
		{Endpoint: "a", Model: "tiny", APIKey: "team-b", Status: 200, InputTokens: usage.Int64(1), OutputTokens: usage.Int64(2)},
		{Endpoint: "b", Model: "big", APIKey: "team-a", Status: 500, Error: true},
	} {
		l.Record(ev)
	}
	rec := httptest.NewRecorder()
	l.ServeUsage(rec, httptest.NewRequest(http.MethodGet, "/api/usage", nil))
	var snap struct {
		UsageCounts      map[string]map[string]int   `json:"usage_counts"`
		TokenUsageCounts map[string]map[string]int64 `json:"token_usage_counts"`
		Local            map[string]map[string]int   `json:"local_usage_counts"`
		Keys             map[string]usage.Count      `json:"key_totals"`
		InFlight         int                         `json:"in_flight"`
		Source           TokenSource                 `json:"token_source"`
	}
	if err := json.Unmarshal(rec.Body.Bytes(), &snap); err != nil {
		t.Fatalf("%v: %s", err, rec.Body)
	}
	if snap.UsageCounts["a"]["tiny"] != 5 || snap.UsageCounts["b"]["big"] != 1 || snap.Local["a"]["tiny"] != 2 || snap.InFlight != 6 {
		t.Fatalf("in flight %v (local %v, total %d), want local plus remote", snap.UsageCounts, snap.Local, snap.InFlight)
	}
	if snap.TokenUsageCounts["a"]["tiny"] != 15 || snap.TokenUsageCounts["b"]["big"] != 0 {
		t.Fatalf("token counts %v", snap.TokenUsageCounts)
	}
	if snap.Keys["team-a"].Requests != 2 || snap.Keys["team-a"].InputTokens != 5 || snap.Keys["team-b"].OutputTokens != 2 {
		t.Fatalf("key totals %+v", snap.Keys)
	}
	if snap.Source.Mode != ModeLocal || !strings.Contains(snap.Source.Reason, "clickhouse.addr is not set") {
		t.Fatalf("token source %+v, want local because ClickHouse is not set", snap.Source)
	}
}

// Each subscriber gets its own scope's snapshots only; a scope's latest
// snapshot goes with its last subscriber.
func TestHubScopes(t *testing.T) {
	h := newHub()
	teamA, teamB := scope{key: "team-a"}, scope{key: "team-b"}
	a, fresh := h.subscribe(teamA)
	if fresh {
		t.Fatal("a new scope had a latest snapshot")
	}
	b, _ := h.subscribe(teamB)
	admin, _ := h.subscribe(everything)
	h.publish(teamB, []byte("b1"))
	h.publish(everything, []byte("all1"))
	if got := a.take(); got != nil {
		t.Fatalf("team-a got %q, published to other scopes", got)
	}
	if got := b.take(); string(got) != "b1" {
		t.Fatalf("team-b got %q, want b1", got)
	}
	if got := admin.take(); string(got) != "all1" {
		t.Fatalf("admin got %q, want all1", got)
	}
	if b2, fresh := h.subscribe(teamB); !fresh || string(b2.take()) != "b1" {
		t.Fatal("a second team-b subscriber did not start with team-b's latest")
	} else {
		h.unsubscribe(b2)
	}
	h.unsubscribe(b)
	h.unsubscribe(b) // twice is fine
	if _, fresh := h.subscribe(teamB); fresh {
		t.Fatal("team-b's latest outlived its subscribers")
	}
	h.publish(scope{key: "nobody"}, []byte("x")) // no subscriber: dropped
	if got := len(h.scopes()); got != 3 {
		t.Fatalf("%d scopes, want 3 (team-a, team-b, admin)", got)
	}
	if n := h.len(); n != 3 {
		t.Fatalf("%d subscribers, want 3", n)
	}
}
