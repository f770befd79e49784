package server

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/droverhq/drover/pkg/config"
	"github.com/droverhq/drover/services/proxy/internal/metrics"
	"github.com/droverhq/drover/services/proxy/internal/routing"
	"github.com/droverhq/drover/testkit/natstest"
	"github.com/droverhq/drover/testkit/ollamatest"
)

// A conversation: a long system prompt, then turns.
func convBody(name string, turns int, fake string) []byte {
	var b strings.Builder
	fmt.Fprintf(&b, `{"model":"tiny","stream":false,"messages":[{"role":"system","content":%q}`, strings.Repeat("You answer for conversation "+name+". ", 30))
	for i := range turns {
		fmt.Fprintf(&b, `,{"role":"user","content":"question %d"},{"role":"assistant","content":"answer %d"}`, i, i)
	}
	b.WriteString(`,{"role":"user","content":"next"}]`)
	if fake != "" {
		b.WriteString(`,"fake":` + fake)
	}
	b.WriteString("}")
	return []byte(b.String())
}

// affinityFakes starts n fakes with tiny loaded and prefix caching on.
func affinityFakes(t *testing.T, n int) []*ollamatest.Server {
	var fakes []*ollamatest.Server
	for range n {
		f := ollamatest.New(ollamatest.Config{Loaded: []string{"tiny"}, Chunks: 2})
		if err := f.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(f.Close)
		fakes = append(fakes, f)
	}
	return fakes
}

// knowLoaded makes the replica's loaded lists current, so every candidate
// counts as loaded and only affinity or load tells them apart.
func knowLoaded(t *testing.T, s *Server) {
	for _, b := range s.Fleet.Backends {
		if _, err := s.Fleet.ReadLoaded(t.Context(), b); err != nil {
			t.Fatal(err)
		}
	}
}

// holdA sends a request that hangs on backend a until the returned func
// is called, and waits until it is in flight there and a has it. Its
// prompt is cached nowhere and its home (the rendezvous hash of its first
// block, docs/routing.md) is a, so it goes to a while a is within the load
// bound and no slot it would overwrite there holds more requested prompts
// than elsewhere (on a fresh fleet, or one whose a holds the holder).
func holdA(t *testing.T, url string, s *Server, a *ollamatest.Server) func() {
	return holdOn(t, url, s, a, "holder on a")
}

// holdOn is holdA with conversation name's first turn, for a test that
// knows it goes to a.
func holdOn(t *testing.T, url string, s *Server, a *ollamatest.Server, name string) func() {
	seen := a.Requests("/api/chat")
	held := s.Router.InFlight()["a"]["tiny:latest"]
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{})
	go func() {
		defer close(done)
		post(t, ctx, url+"/api/chat", convBody(name, 0, `{"hang":true}`)) //nolint:errcheck // cancelled on purpose
	}()
	waitFor(t, func() bool {
		return s.Router.InFlight()["a"]["tiny:latest"] == held+1 && a.Requests("/api/chat") > seen
	})
	return func() {
		cancel()
		<-done
		waitFor(t, func() bool { return s.Router.InFlight()["a"]["tiny:latest"] == held })
	}
}

// served posts body and returns which fake answered (by their request
// counts; requests go one at a time).
func served(t *testing.T, url string, body []byte, fakes []*ollamatest.Server) string {
	t.Helper()
	before := make([]int64, len(fakes))
	for i, f := range fakes {
		before[i] = f.Requests("/api/chat")
	}
	resp, out, err := post(t, t.Context(), url+"/api/chat", body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("%v %s", err, out)
	}
	who := ""
	for i, f := range fakes {
		if f.Requests("/api/chat") > before[i] {
			who += string(rune('a' + i))
		}
	}
	return who
}

// A conversation whose first turn went to b (a was busy; under prefix, b
// is also its home) returns to b on an idle fleet under the prefix
// strategy, where least loaded sends it to a: the follow-up finds its
// prefix in b's cache.
func TestAffinityFollowUpReturnsToWarmBackend(t *testing.T) {
	for _, tt := range []struct {
		strategy, want string
	}{
		{config.StrategyPrefix, "b"},
		{config.StrategyLeastLoaded, "a"},
		{config.StrategyRoundRobin, "a"}, // a, b, then a again
	} {
		t.Run(tt.strategy, func(t *testing.T) {
			fakes := affinityFakes(t, 2)
			e := newEnvWith(t, fakes, func(c *config.Config) { c.Routing.Strategy = tt.strategy })
			knowLoaded(t, e.srv)
			release := holdA(t, e.url, e.srv, fakes[0])
			if got := served(t, e.url, convBody("one", 0, ""), fakes); got != "b" {
				t.Fatalf("the first turn went to %q while a was busy", got)
			}
			release()
			cachedBefore := fakes[1].CachedPromptTokens()
			if got := served(t, e.url, convBody("one", 1, ""), fakes); got != tt.want {
				t.Fatalf("the follow-up went to %q, want %s", got, tt.want)
			}
			if tt.want == "b" && fakes[1].CachedPromptTokens() == cachedBefore {
				t.Error("b served the follow-up from no cache")
			}
		})
	}
}

// newEnvWith is newEnv over fakes already started.
func newEnvWith(t *testing.T, fakes []*ollamatest.Server, mutate func(*config.Config)) *env {
	t.Helper()
	e := newEnv(t, 0, nil, func(c *config.Config) {
		for i, f := range fakes {
			c.Backends = append(c.Backends, config.Backend{Name: string(rune('a' + i)), URL: f.URL()})
		}
		if mutate != nil {
			mutate(c)
		}
	})
	e.fakes = fakes
	return e
}

// Two replicas over real NATS: a follow-up sent through the other replica
// finds the warm backend when the index is shared (a hit, on b), and does
// not when it is not (a miss: so the test can tell). The conversation's
// home is a; its first turn goes to b because a is two requests ahead,
// beyond the load bound of 1.
func TestAffinitySharedAcrossReplicas(t *testing.T) {
	for _, share := range []bool{true, false} {
		t.Run(fmt.Sprintf("share=%v", share), func(t *testing.T) {
			ns := natstest.Start(t)
			fakes := affinityFakes(t, 2)
			reps := replicas(t, 2, ns.URL(), fakes, func(c *config.Config) {
				c.Routing.Affinity.Share = &share
				c.Routing.Affinity.ShareInterval = 5 * time.Millisecond
				c.Routing.Affinity.LoadBound = 1
			})
			var urls []string
			for _, r := range reps {
				knowLoaded(t, r)
				urls = append(urls, serve(t, r))
			}
			for _, r := range reps {
				waitFor(t, func() bool { return len(r.Sync.Status().Peers) == 1 })
			}
			release1 := holdA(t, urls[0], reps[0], fakes[0])
			release2 := holdA(t, urls[0], reps[0], fakes[0])
			// The other replica must see a's load too before it routes:
			// the requests, and with sharing their estimated tokens.
			waitFor(t, func() bool { return reps[1].Sync.InFlight(routing.Key{Backend: "a", Model: "tiny:latest"}) == 2 })
			if share {
				waitFor(t, func() bool { return reps[1].affinity.sharer.Tokens("a") > 0 })
			}
			if got := served(t, urls[1], convBody("two", 0, ""), fakes); got != "b" {
				t.Fatalf("the first turn went to %q while a was busy", got)
			}
			release2()
			release1()
			waitFor(t, func() bool { return reps[1].Sync.InFlight(routing.Key{Backend: "a", Model: "tiny:latest"}) == 0 })
			if share {
				waitFor(t, func() bool { return reps[1].affinity.sharer.Tokens("a") == 0 })
			}
			if share {
				waitFor(t, func() bool { return reps[0].affinity.status().(metrics.AffinityStatus).Received > 0 })
			}
			before := reps[0].affinity.status().(metrics.AffinityStatus)
			got := served(t, urls[0], convBody("two", 1, ""), fakes)
			after := reps[0].affinity.status().(metrics.AffinityStatus)
			if share && (got != "b" || after.Hits != before.Hits+1) {
				t.Fatalf("sharing: the follow-up through the other replica went to %q, hits %d -> %d", got, before.Hits, after.Hits)
			}
			if !share && after.Misses != before.Misses+1 {
				t.Fatalf("not sharing: the follow-up through the other replica went to %q, misses %d -> %d", got, before.Misses, after.Misses)
			}
			st := reps[1].affinity.status().(metrics.AffinityStatus)
			if share && (st.Sent == 0 || st.SentBytes == 0) {
				t.Fatalf("nothing counted as sent: %+v", st)
			}
			t.Logf("replica q sent %d messages, %d bytes for one request", st.Sent, st.SentBytes)
		})
	}
}

// Affinity never takes a full backend (the cap holds) and never keeps a
// request on a failing one (failover as before).
func TestAffinityKeepsCapsAndFailover(t *testing.T) {
	fakes := affinityFakes(t, 2)
	e := newEnvWith(t, fakes, func(c *config.Config) {
		c.Routing.MaxConcurrency = 1
		c.Routing.Affinity.LoadBound = 100
		c.Health.FailureThreshold = 100
	})
	knowLoaded(t, e.srv)
	if got := served(t, e.url, convBody("three", 0, ""), fakes); got != "a" {
		t.Fatalf("first turn on %q", got)
	}
	// a is full (cap 1, held by the conversation's first turn again, which
	// a holds): the follow-up goes to b, not into a's queue.
	release := holdOn(t, e.url, e.srv, fakes[0], "three")
	if got := served(t, e.url, convBody("three", 1, ""), fakes); got != "b" {
		t.Fatalf("with a full, the follow-up went to %q", got)
	}
	release()
	// The conversation is warm on both now; a fails: the request fails
	// over to b.
	fakes[0].SetFailure(http.StatusInternalServerError, "boom")
	fakes[1].SetFailure(0, "")
	if got := served(t, e.url, convBody("three", 2, ""), fakes); !strings.Contains(got, "b") {
		t.Fatalf("with a failing, the follow-up ended on %q", got)
	}
	fakes[0].SetFailure(0, "")
}

// /health shows the hit rate to an admin; /metrics has the counters.
func TestAffinityHealthAndMetrics(t *testing.T) {
	fakes := affinityFakes(t, 2)
	e := newEnvWith(t, fakes, nil)
	knowLoaded(t, e.srv)
	for turn := range 3 {
		served(t, e.url, convBody("four", turn, ""), fakes)
	}
	st := e.srv.affinity.status().(metrics.AffinityStatus)
	if st.Strategy != "prefix" || st.Hits != 2 || st.Misses != 1 || st.IndexEntries == 0 || st.CachedRate <= 0 {
		t.Fatalf("%+v", st)
	}
	resp, body, err := getBody(t, e.url+"/metrics")
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatal(err)
	}
	for _, want := range []string{`drover_affinity_picks_total{outcome="hit"} 2`, `drover_affinity_picks_total{outcome="miss"} 1`, "drover_affinity_index_entries", `drover_affinity_prompt_bytes_total{cached="true"}`} {
		if !strings.Contains(string(body), want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
}

func getBody(t *testing.T, url string) (*http.Response, []byte, error) {
	t.Helper()
	req, _ := http.NewRequestWithContext(t.Context(), http.MethodGet, url, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp, body, err
}

// Under the session strategy an X-Session-Id brings a conversation back
// to where it went, whatever its prompt; without the header nothing does.
func TestAffinitySessionHeader(t *testing.T) {
	fakes := affinityFakes(t, 2)
	e := newEnvWith(t, fakes, func(c *config.Config) { c.Routing.Strategy = config.StrategySession })
	knowLoaded(t, e.srv)
	send := func(body []byte, session string) string {
		t.Helper()
		before := []int64{fakes[0].Requests("/api/chat"), fakes[1].Requests("/api/chat")}
		req, _ := http.NewRequestWithContext(t.Context(), http.MethodPost, e.url+"/api/chat", bytes.NewReader(body))
		if session != "" {
			req.Header.Set("X-Session-Id", session)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil || resp.StatusCode != http.StatusOK {
			t.Fatalf("%v %v", resp, err)
		}
		resp.Body.Close()
		who := ""
		for i, f := range fakes {
			if f.Requests("/api/chat") > before[i] {
				who += string(rune('a' + i))
			}
		}
		return who
	}
	release := holdA(t, e.url, e.srv, fakes[0])
	if got := send(convBody("five", 0, ""), "s-1"); got != "b" {
		t.Fatalf("first turn on %q while a was busy", got)
	}
	release()
	if got := send(convBody("another prompt", 0, ""), "s-1"); got != "b" {
		t.Fatalf("the session's next request went to %q", got)
	}
	if got := send(convBody("five", 1, ""), ""); got != "a" {
		t.Fatalf("without the header the follow-up went to %q (the session strategy hashes no prompts)", got)
	}
}
