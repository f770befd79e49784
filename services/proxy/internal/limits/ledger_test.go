package limits

import (
	"context"
	"encoding/json"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"go.uber.org/goleak"

	"github.com/droverhq/drover/pkg/apikey"
	"github.com/droverhq/drover/pkg/config"
	"github.com/droverhq/drover/pkg/usage"
	"github.com/droverhq/drover/services/proxy/internal/auth"
	"github.com/droverhq/drover/testkit/natstest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// fakeClock is a settable clock.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) now() time.Time  { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *fakeClock) set(t time.Time) { c.mu.Lock(); c.t = t; c.mu.Unlock() }

func newLocal(t *testing.T, clock *fakeClock, admission string) *Ledger {
	t.Helper()
	l := New(Options{Replica: "r1", Config: config.Limits{DefaultOutputTokens: 100, Admission: admission}, Now: clock.now})
	t.Cleanup(l.Close)
	return l
}

func TestEstimate(t *testing.T) {
	body := func(s string) []byte { return []byte(s) }
	for _, c := range []struct {
		name, route string
		body        []byte
		want        int64
	}{
		{"default output", "/api/chat", body(`{"model":"m"}`), 4 + 100},
		{"num_predict", "/api/chat", body(`{"model":"m","options":{"num_predict":7}}`), 11 + 7},
		{"num_predict -1 is the default", "/api/chat", body(`{"options":{"num_predict":-1}}`), 8 + 100},
		{"max_tokens", "/v1/chat/completions", body(`{"max_tokens":20}`), 5 + 20},
		{"smallest bound", "/v1/chat/completions", body(`{"max_tokens":20,"max_completion_tokens":9}`), 11 + 9},
		{"max_output_tokens", "/v1/responses", body(`{"max_output_tokens":3}`), 6 + 3},
		{"odd types: the default", "/api/chat", body(`{"max_tokens":"x"}`), 5 + 100},
		{"embeddings produce no output", "/api/embed", body(`{"input":"abcd"}`), 4},
	} {
		if got := Estimate(c.route, c.body, 100); got != c.want {
			t.Errorf("%s: %d, want %d", c.name, got, c.want)
		}
	}
}

// A ticket settles once whatever calls it; a panic's deferred Release
// frees the reservation.
func TestTicketSettlesOnce(t *testing.T) {
	clock := &fakeClock{t: time.Date(2026, 12, 6, 10, 0, 5, 0, time.UTC)}
	l := newLocal(t, clock, "reserve")
	p := auth.Principal{ID: "k", Limits: apikey.Limits{Concurrent: 1, TokensPerDay: 1000}}
	func() {
		defer func() { recover() }() //nolint:errcheck // the panic is the test
		tk, r := l.Admit(context.Background(), p, "m", "/api/chat", []byte(`{}`))
		if r != nil {
			t.Fatal(r.Message)
		}
		defer tk.Release()
		if _, r := l.Admit(context.Background(), p, "m", "/api/chat", []byte(`{}`)); r == nil || r.Reason != ReasonConcurrent {
			t.Fatalf("second request at concurrent 1: %+v", r)
		}
		panic("handler bug")
	}()
	if own, fleet := l.Outstanding("k"); own != 0 || fleet != 0 {
		t.Fatalf("after a panic: %d own, %d in flight", own, fleet)
	}
	tk, r := l.Admit(context.Background(), p, "m", "/api/chat", []byte(`{}`))
	if r != nil {
		t.Fatal(r.Message)
	}
	ev := usage.Event{ID: "e1", Status: 200, Time: clock.now(), InputTokens: usage.Int64(10), OutputTokens: usage.Int64(20)}
	tk.Settle(&ev)
	tk.Settle(&ev)
	tk.Release()
	if st := l.Status(p); st.Spend.TokensToday != 30 || st.Spend.InFlight != 0 || *st.Remaining.TokensToday != 970 {
		t.Fatalf("after one settlement of 30: %+v", st.Spend)
	}
	if st := l.Status(p); st.Fleet || !strings.Contains(st.Reason, "nats.url is not set") {
		t.Fatalf("without NATS the status says so: %+v", st)
	}
}

// Refusals name the window and when it resets; the next window admits.
func TestRefusalsAndResets(t *testing.T) {
	clock := &fakeClock{t: time.Date(2026, 12, 31, 23, 59, 50, 0, time.UTC)}
	l := newLocal(t, clock, "reserve")
	p := auth.Principal{ID: "k", Limits: apikey.Limits{RequestsPerMinute: 2}, ModelLimits: map[string]apikey.Limits{"big": {TokensPerMonth: 150}}}
	admit := func(model string) *Refusal {
		tk, r := l.Admit(context.Background(), p, model, "/api/chat", []byte(`{"options":{"num_predict":50}}`))
		if tk != nil {
			tk.Settle(&usage.Event{ID: usage.NewID(), Status: 200, Time: clock.now(), InputTokens: usage.Int64(10), OutputTokens: usage.Int64(50)})
		}
		return r
	}
	for range 2 {
		if r := admit("m"); r != nil {
			t.Fatalf("a request under 2 per minute refused: %+v", r)
		}
	}
	r := admit("m")
	if r == nil || r.Reason != ReasonRequestsPerMinute || r.Budget || r.RetryAfterSeconds() != "10" || r.Header["x-ratelimit-remaining-requests"] != "0" {
		t.Fatalf("third request: %+v", r)
	}
	clock.set(clock.now().Add(10 * time.Second)) // a new minute, day, month and year
	for range 2 {
		if r := admit("big"); r != nil {
			t.Fatalf("the new minute refused: %+v", r)
		}
	}
	clock.set(clock.now().Add(time.Minute))
	r = admit("big") // 2 × 60 spent + 58 reserved > 150
	if r == nil || r.Reason != "model_"+ReasonTokensPerMonth || !r.Budget {
		t.Fatalf("over the model's month budget: %+v", r)
	}
	if want := time.Date(2027, 2, 1, 0, 0, 0, 0, time.UTC).Sub(clock.now()); r.RetryAfter != want {
		t.Fatalf("Retry-After %s, want until February (%s)", r.RetryAfter, want)
	}
	if admit("m") != nil {
		t.Fatal("the model budget refused another model")
	}
}

// The count baseline admits while spent < limit, however much is in
// flight: the overshoot reservations prevent.
func TestCountBaseline(t *testing.T) {
	clock := &fakeClock{t: time.Date(2026, 12, 6, 10, 0, 5, 0, time.UTC)}
	for _, c := range []struct {
		admission string
		want      int
	}{{"count", 10}, {"reserve", 1}} {
		l := newLocal(t, clock, c.admission)
		p := auth.Principal{ID: "k", Limits: apikey.Limits{TokensPerDay: 150}}
		n := 0
		for range 10 {
			if _, r := l.Admit(context.Background(), p, "m", "/api/chat", []byte(`{"options":{"num_predict":100}}`)); r == nil {
				n++
			}
		}
		if n != c.want {
			t.Errorf("%s: %d of 10 admitted in flight against 150 tokens, want %d", c.admission, n, c.want)
		}
	}
}

// Peers: reservations arrive and count, expire with their replica, and
// claims past the bounds are dropped or cut.
func TestPeers(t *testing.T) {
	ns := natstest.Start(t)
	conn := func() *nats.Conn {
		nc, err := nats.Connect(ns.URL())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(nc.Close)
		return nc
	}
	// A quiet peer expires after three heartbeats: 600 ms, long enough for
	// a loaded machine to see its reservations first.
	l := New(Options{Replica: "r1", Conn: conn(), Heartbeat: 200 * time.Millisecond, Config: config.Limits{DefaultOutputTokens: 10}})
	t.Cleanup(l.Close)
	p := auth.Principal{ID: "k", Limits: apikey.Limits{Concurrent: 5, TokensPerDay: 1000}}
	tk, _ := l.Admit(context.Background(), p, "m", "/api/chat", nil) // makes k's limits known
	tk.Release()
	forger := conn()
	send := func(m wireMsg) {
		b, _ := json.Marshal(m)
		if err := forger.Publish(config.SubjectLimits, b); err != nil {
			t.Fatal(err)
		}
		forger.Flush() //nolint:errcheck
	}
	inFlight := func() int64 { _, n := l.Outstanding("k"); return n }
	wait := func(what string, cond func() bool) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for !cond() {
			if time.Now().After(deadline) {
				t.Fatal(what)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	send(wireMsg{Replica: "bad", Epoch: "x", Res: []wireRes{{ID: 1, Key: "k", Tokens: -5}}})
	send(wireMsg{Replica: "r2", Epoch: "a", Res: []wireRes{{ID: 1, Key: "k", Model: "m", Tokens: 1 << 30}, {ID: 2, Key: "k", Tokens: 100}}})
	wait("r2's reservations never counted", func() bool { return inFlight() == 2 })
	if st := l.Status(p); st.Spend.Reserved != 1000+100 {
		t.Fatalf("reserved %d: the huge claim is cut to the key's largest limit (1000), plus 100", st.Spend.Reserved)
	}
	if _, r := l.Admit(context.Background(), p, "m", "/api/chat", nil); r == nil || r.Reason != ReasonTokensPerDay {
		t.Fatalf("peers' reservations fill the budget: %+v", r)
	}
	// r2 settles one; then it goes quiet and its other reservation expires.
	send(wireMsg{Replica: "r2", Epoch: "a", Set: []wireSettle{{ID: 2, Event: "ev-2", Key: "k", Tokens: 40, At: time.Now().UnixMilli()}}})
	wait("r2's settlement never counted", func() bool { return l.Status(p).Spend.TokensToday >= 40 && inFlight() == 1 })
	wait("a quiet replica's reservations never expired", func() bool { return inFlight() == 0 })
	if st := l.Status(p); st.Spend.TokensToday != 40 || st.Fleet {
		t.Fatalf("after expiry: %+v (no clickhouse: not fleet-wide for budgets)", st)
	}
	// The same settlement again (its event id) counts once.
	send(wireMsg{Replica: "r2", Epoch: "a", Set: []wireSettle{{ID: 2, Event: "ev-2", Key: "k", Tokens: 40, At: time.Now().UnixMilli()}}})
	send(wireMsg{Replica: "r2", Epoch: "a", Res: []wireRes{{ID: 3, Key: "k", Tokens: 1}}})
	wait("r2's next message never arrived", func() bool { return inFlight() == 1 })
	if got := l.Status(p).Spend.TokensToday; got != 40+1 {
		t.Fatalf("a repeated settlement counted again: %d", got)
	}
}

// A model limit holds under every name Ollama treats as the same model:
// set on "tiny:latest", it counts requests for "tiny", and back.
func TestModelLimitNamesNormalised(t *testing.T) {
	clock := &fakeClock{t: time.Date(2026, 12, 6, 10, 0, 5, 0, time.UTC)}
	l := newLocal(t, clock, "reserve")
	p := auth.Principal{ID: "k", ModelLimits: map[string]apikey.Limits{"tiny:latest": {RequestsPerMinute: 1}}}
	admit := func(model string) *Refusal {
		tk, r := l.Admit(context.Background(), p, model, "/api/chat", []byte(`{}`))
		if tk != nil {
			tk.Settle(&usage.Event{ID: usage.NewID(), Status: 200, Time: clock.now(), InputTokens: usage.Int64(1), OutputTokens: usage.Int64(1)})
		}
		return r
	}
	if r := admit("tiny"); r != nil {
		t.Fatalf("first request refused: %+v", r)
	}
	for _, name := range []string{"tiny", "tiny:latest"} {
		if r := admit(name); r == nil || r.Reason != "model_"+ReasonRequestsPerMinute {
			t.Fatalf("%s: second request of the minute: %+v", name, r)
		}
	}
	if left := l.Status(p).ModelRemaining["tiny:latest"].RequestsThisMinute; left == nil || *left != 0 {
		t.Fatalf("status left %v", left)
	}
	if r := admit("tiny2"); r != nil {
		t.Fatalf("another model refused: %+v", r)
	}
}
