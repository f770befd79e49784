package server

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/droverhq/drover/pkg/apikey"
	"github.com/droverhq/drover/pkg/config"
	"github.com/droverhq/drover/services/proxy/internal/routing"
	"github.com/droverhq/drover/testkit/natstest"
	"github.com/droverhq/drover/testkit/ollamatest"
)

// Keys of the fairness tests: weights 3 and 1, two of weight 1, and an
// interactive and a batch key.
func fairKeys(c *config.Config) {
	c.Auth.Keys = []config.APIKey{
		{ID: "heavy", Key: "secret-fair-heavy", Role: apikey.RoleClient, Weight: 3},
		{ID: "light", Key: "secret-fair-light", Role: apikey.RoleClient, Weight: 1},
		{ID: "a", Key: "secret-fair-a", Role: apikey.RoleClient, Weight: 1},
		{ID: "b", Key: "secret-fair-b", Role: apikey.RoleClient, Weight: 1},
		{ID: "chat", Key: "secret-fair-chat", Role: apikey.RoleClient, Class: apikey.ClassInteractive},
		{ID: "bulk", Key: "secret-fair-bulk", Role: apikey.RoleClient, Class: apikey.ClassBatch},
	}
}

// fairGroup is a set of closed-loop clients of one key: each sends its next
// request as soon as the last one ends, on replica urls[i%len(urls)].
type fairGroup struct {
	name, secret, header string
	clients              int
	urls                 []string
}

// fairServed is one request of a group: when it was sent and when its answer
// began (the stream's headers: the slot was granted just before).
type fairServed struct {
	group         string
	sent, granted time.Time
}

// runFairGroups runs the groups against a saturated fleet until total answers
// began, then lets every client finish. It returns every request, and the
// window in which every client of every group was still sending, so every
// key had waiters: from the first warm answers to the stop.
func runFairGroups(t *testing.T, groups []fairGroup, warm, total int) (out []fairServed, from, to time.Time) {
	t.Helper()
	var mu sync.Mutex // guards out, from, to
	stop := make(chan struct{})
	var once sync.Once
	var wg sync.WaitGroup
	for _, g := range groups {
		for i := range g.clients {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for {
					select {
					case <-stop:
						return
					default:
					}
					sent := time.Now()
					granted, err := fairChat(g.urls[i%len(g.urls)], g.secret, g.header)
					if err != nil {
						t.Errorf("%s: %v", g.name, err)
						return
					}
					mu.Lock()
					out = append(out, fairServed{group: g.name, sent: sent, granted: granted})
					switch len(out) {
					case warm:
						from = granted
					case total:
						to = granted
						once.Do(func() { close(stop) })
					}
					mu.Unlock()
				}
			}()
		}
	}
	wg.Wait()
	return out, from, to
}

// fairChat sends one streamed chat as a key and reads the whole answer. It
// returns when the answer's headers came.
func fairChat(url, secret, priority string) (time.Time, error) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, url+"/api/chat", bytes.NewReader(chatBody("tiny", true, "")))
	req.Header.Set("Authorization", "Bearer "+secret)
	if priority != "" {
		req.Header.Set(routing.PriorityHeader, priority)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return time.Time{}, err
	}
	granted := time.Now()
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		return time.Time{}, fmt.Errorf("status %d: %v %s", resp.StatusCode, err, body)
	}
	return granted, nil
}

// fairShares counts, per group, the answers that began inside the window.
func fairShares(out []fairServed, from, to time.Time) map[string]int {
	got := map[string]int{}
	for _, s := range out {
		if s.granted.After(from) && !s.granted.After(to) {
			got[s.group]++
		}
	}
	return got
}

// fairOvertaken is, for each request of group g, how many requests of other
// groups began while it waited.
func fairOvertaken(out []fairServed, g string) []int {
	var n []int
	for _, s := range out {
		if s.group != g {
			continue
		}
		k := 0
		for _, o := range out {
			if o.group != g && o.granted.After(s.sent) && o.granted.Before(s.granted) {
				k++
			}
		}
		n = append(n, k)
	}
	slices.Sort(n)
	return n
}

func fairPct(xs []int, p float64) int {
	if len(xs) == 0 {
		return 0
	}
	return xs[min(len(xs)-1, int(float64(len(xs))*p))]
}

func fairMean(xs []int) float64 {
	s := 0
	for _, x := range xs {
		s += x
	}
	return float64(s) / float64(max(len(xs), 1))
}

// fairFleet starts three replicas over one real NATS and one fake backend
// whose cap of 4 is always full, slow enough (10 ms a chunk) that queues
// form.
func fairFleet(t *testing.T) ([]string, *ollamatest.Server) {
	urls, fakes := fairFleetOf(t, 1, 4)
	return urls, fakes[0]
}

// fairFleetOf is fairFleet with n backends of cap slots each.
func fairFleetOf(t *testing.T, n, cap int) ([]string, []*ollamatest.Server) {
	ns := natstest.Start(t)
	var fakes []*ollamatest.Server
	for range n {
		fake := ollamatest.New(ollamatest.Config{Chunks: 4, ChunkDelay: 10 * time.Millisecond})
		if err := fake.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(fake.Close)
		fakes = append(fakes, fake)
	}
	reps := replicas(t, 3, ns.URL(), fakes, func(c *config.Config) {
		fairKeys(c)
		c.Routing.MaxConcurrency = cap
		c.Routing.Queue.MaxLength = 1000
		c.Routing.Queue.MaxPerKey = 1000
		c.Routing.Queue.MaxWait = time.Minute
	})
	var urls []string
	for _, r := range reps {
		urls = append(urls, serve(t, r))
	}
	for _, r := range reps {
		waitFor(t, func() bool { return len(r.Sync.Status().Peers) == 2 })
	}
	t.Cleanup(func() {
		for _, r := range reps {
			waitFor(t, func() bool { return len(r.Router.InFlight()) == 0 && r.Router.QueueLen() == 0 })
		}
	})
	return urls, fakes
}

// Weights 3:1 across three replicas: the heavy key's clients on every
// replica, the light key's on one. While both wait, the slots split 3:1
// within 10 %.
func TestFleetFairnessWeights(t *testing.T) {
	for _, tt := range []struct {
		name          string
		backends, cap int
		light         func(urls []string) []string
	}{
		{"light key on one replica", 1, 4, func(u []string) []string { return u[2:] }},
		{"both keys on every replica", 1, 4, func(u []string) []string { return u }},
		// Weights finer than a backend's cap: shares are kept across
		// grants and backends, not per held slot.
		{"two backends of two slots", 2, 2, func(u []string) []string { return u }},
	} {
		t.Run(tt.name, func(t *testing.T) {
			urls, fakes := fairFleetOf(t, tt.backends, tt.cap)
			defer func() {
				for i, f := range fakes {
					// Logged, not asserted: with two keys, replicas that disagree
					// for a message delay on which goes next can both take a slot,
					// so the overshoot grows with the machine's scheduling delay
					// (docs/limits.md); TestFleetWideCap asserts the cap.
					t.Logf("backend %d saw at most %d at once (cap %d)", i, f.MaxInFlight("tiny"), tt.cap)
				}
			}()
			out, from, to := runFairGroups(t, []fairGroup{
				{name: "heavy", secret: "secret-fair-heavy", clients: 12, urls: urls},
				{name: "light", secret: "secret-fair-light", clients: 6, urls: tt.light(urls)},
			}, 40, 340)
			s := fairShares(out, from, to)
			share := float64(s["heavy"]) / float64(s["heavy"]+s["light"])
			t.Logf("weights 3:1 over 3 replicas, %s: heavy %d, light %d answers while both waited; heavy's share %.3f (want 0.75)", tt.name, s["heavy"], s["light"], share)
			if s["heavy"]+s["light"] < 200 {
				t.Fatalf("only %d answers in the window", s["heavy"]+s["light"])
			}
			if share < 0.75*0.9 || share > 0.75*1.1 {
				t.Fatalf("heavy's share %.3f, want 0.75 within 10%%", share)
			}
		})
	}
}

// Equal weights, key a with ten times b's clients (a on every replica, b
// on one): Jain's index over the answers each got while both waited is at
// least 0.95, and b is not starved (few of a's requests pass each of b's).
func TestFleetFairnessHeavyBesideLight(t *testing.T) {
	urls, fake := fairFleet(t)
	defer func() { t.Logf("the backend saw at most %d at once (cap 4)", fake.MaxInFlight("tiny")) }()
	out, from, to := runFairGroups(t, []fairGroup{
		{name: "a", secret: "secret-fair-a", clients: 30, urls: urls},
		{name: "b", secret: "secret-fair-b", clients: 3, urls: urls[:1]},
	}, 40, 340)
	s := fairShares(out, from, to)
	x, y := float64(s["a"]), float64(s["b"])
	idx := (x + y) * (x + y) / (2 * (x*x + y*y))
	passed := fairOvertaken(out, "b")
	t.Logf("equal weights, a 10x b's clients over 3 replicas (b on one): a %d, b %d answers while both waited; Jain %.4f; a's answers while one of b's waited: mean %.1f, p99 %d, max %d (one FIFO: ~30)",
		s["a"], s["b"], idx, fairMean(passed), fairPct(passed, 0.99), passed[len(passed)-1])
	if idx < 0.95 {
		t.Fatalf("Jain's index %.4f < 0.95", idx)
	}
	// b holds half the slots with 3 clients: each of its requests waits
	// for about one release of its own (its fair share), not behind a's
	// 30 clients.
	if m := fairMean(passed); m > 6 {
		t.Fatalf("a's requests passed b's %.1f times on average", m)
	}
}

// A batch flood on every replica beside interactive clients on one: the
// interactive requests are passed by few batch ones, while the batch key
// asking to be interactive, and the interactive key lowering itself to
// batch, wait behind them like batch.
func TestFleetPriorityClasses(t *testing.T) {
	urls, fake := fairFleet(t)
	defer func() { t.Logf("the backend saw at most %d at once (cap 4)", fake.MaxInFlight("tiny")) }()
	out, _, _ := runFairGroups(t, []fairGroup{
		{name: "bulk", secret: "secret-fair-bulk", clients: 24, urls: urls},
		{name: "bulk-raised", secret: "secret-fair-bulk", header: "interactive", clients: 6, urls: urls},
		{name: "chat-lowered", secret: "secret-fair-chat", header: "batch", clients: 6, urls: urls},
		{name: "chat", secret: "secret-fair-chat", clients: 2, urls: urls[2:]},
	}, 40, 340)
	chat, raised, lowered := fairOvertaken(out, "chat"), fairOvertaken(out, "bulk-raised"), fairOvertaken(out, "chat-lowered")
	t.Logf("interactive beside a batch flood over 3 replicas: requests that passed each interactive one: mean %.1f, p99 %d; each raised-batch one: mean %.1f; each lowered one: mean %.1f",
		fairMean(chat), fairPct(chat, 0.99), fairMean(raised), fairMean(lowered))
	// Strict priority leaves only what a message's delay lets through: a
	// replica that has not yet heard of an interactive waiter elsewhere
	// grants batch (and answers began a moment apart are counted too).
	if m := fairMean(chat); m > 4 {
		t.Fatalf("interactive requests were passed %.1f times on average", m)
	}
	for name, xs := range map[string][]int{"bulk-raised": raised, "chat-lowered": lowered} {
		if fairMean(xs) < 4*max(fairMean(chat), 1) {
			t.Fatalf("%s requests were passed %.1f times on average, interactive ones %.1f: it was not treated as batch", name, fairMean(xs), fairMean(chat))
		}
	}
}

// One replica: a key over routing.queue.max_per_key gets the full-queue
// answer in its own words, other keys still queue; an unknown priority is a
// clear error in the API's format.
func TestPerKeyQueueBoundAndBadPriority(t *testing.T) {
	fake := ollamatest.New(ollamatest.Config{Chunks: 4, ChunkDelay: 10 * time.Millisecond})
	if err := fake.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(fake.Close)
	cfg := &config.Config{Replica: "p", Backends: []config.Backend{{Name: "a", URL: fake.URL()}}}
	fairKeys(cfg)
	cfg.Routing.MaxConcurrency = 1
	cfg.Routing.Queue.MaxPerKey = 2
	cfg.Routing.Queue.MaxWait = time.Minute
	loaded, err := config.FromStruct(cfg)
	if err != nil {
		t.Fatal(err)
	}
	s := New(loaded, slog.New(slog.DiscardHandler), Options{})
	t.Cleanup(s.Close)
	url := serve(t, s)

	resp := fairRaw(t, url, "secret-fair-a", "urgent")
	if resp.status != http.StatusBadRequest || resp.err == "" {
		t.Fatalf("unknown priority: %d %q", resp.status, resp.err)
	}

	// The bad request above warmed the model list; now the backend holds
	// every request until released.
	fake.SetHang(true)
	var wg sync.WaitGroup
	// One of a's in flight, then two of a's waiting, and b's.
	for i, secret := range []string{"secret-fair-a", "secret-fair-a", "secret-fair-a", "secret-fair-b"} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if r := fairRaw(t, url, secret, ""); r.status != http.StatusOK {
				t.Errorf("%s: %d %s", secret, r.status, r.err)
			}
		}()
		waitFor(t, func() bool { return len(s.Router.InFlight()) == 1 && s.Router.QueueLen() == i })
	}
	over := fairRaw(t, url, "secret-fair-a", "")
	if over.status != http.StatusServiceUnavailable || over.err != routing.ErrKeyQueueFull.Error() || over.retryAfter == "" {
		t.Fatalf("a over its bound: %d %q Retry-After %q", over.status, over.err, over.retryAfter)
	}
	fake.SetHang(false)
	wg.Wait()
}

type fairResult struct {
	status          int
	err, retryAfter string
}

func fairRaw(t *testing.T, url, secret, priority string) fairResult {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, url+"/api/chat", bytes.NewReader(chatBody("tiny", false, "")))
	req.Header.Set("Authorization", "Bearer "+secret)
	if priority != "" {
		req.Header.Set(routing.PriorityHeader, priority)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var e struct {
		Error string `json:"error"`
	}
	body, _ := io.ReadAll(resp.Body)
	json.Unmarshal(body, &e) //nolint:errcheck // a success has no error field
	return fairResult{status: resp.StatusCode, err: e.Error, retryAfter: resp.Header.Get("Retry-After")}
}
