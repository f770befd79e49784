package server

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ollama/ollama/api"
	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"

	"github.com/droverhq/drover/pkg/apikey"
	"github.com/droverhq/drover/pkg/chstore"
	"github.com/droverhq/drover/pkg/config"
	"github.com/droverhq/drover/pkg/usage"
	"github.com/droverhq/drover/services/proxy/internal/auth"
	"github.com/droverhq/drover/testkit/chtest"
	"github.com/droverhq/drover/testkit/natstest"
	"github.com/droverhq/drover/testkit/ollamatest"
)

const teamSecret = "key-limited-1234"

// limitedFleet starts three replicas sharing one NATS and one fake, with
// key "team" limited by lim.
func limitedFleet(t *testing.T, lim apikey.Limits, fakeCfg ollamatest.Config, mutate ...func(*config.Config)) ([]*Server, []string, *ollamatest.Server) {
	t.Helper()
	ns := natstest.Start(t)
	fake := ollamatest.New(fakeCfg)
	if err := fake.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(fake.Close)
	reps := replicas(t, 3, ns.URL(), []*ollamatest.Server{fake}, func(c *config.Config) {
		c.Routing.MaxConcurrency = 64
		c.Auth.Keys = []config.APIKey{{ID: "team", Key: teamSecret, Limits: lim}}
		for _, m := range mutate {
			m(c)
		}
	})
	var urls []string
	for _, r := range reps {
		urls = append(urls, serve(t, r))
	}
	for _, r := range reps {
		waitFor(t, func() bool { return len(r.Sync.Status().Peers) == 2 })
	}
	return reps, urls, fake
}

// chatAs sends one non-streaming chat with key secret.
func chatAs(ctx context.Context, url, secret, body string) (*http.Response, []byte, error) {
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, url+"/api/chat", strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+secret)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp, b, err
}

// awayFromMinuteEnd waits until the clock minute has at least d left, so
// that a per-minute test runs within one window.
func awayFromMinuteEnd(d time.Duration) {
	now := time.Now()
	if left := now.Truncate(time.Minute).Add(time.Minute).Sub(now); left < d {
		time.Sleep(left + 100*time.Millisecond)
	}
}

// burst sends n requests, perReplica at once on each replica, and returns
// the admitted ones' reported tokens and the count of 200s and 429s.
func burst(t *testing.T, urls []string, n, perReplica int, body string) (ok, refused, tokens int64) {
	t.Helper()
	var wg sync.WaitGroup
	var okN, refN, tokN atomic.Int64
	for r, u := range urls {
		jobs := make(chan struct{}, n)
		for i := range n {
			if i%len(urls) == r {
				jobs <- struct{}{}
			}
		}
		close(jobs)
		for range perReplica {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for range jobs {
					resp, b, err := chatAs(context.Background(), u, teamSecret, body)
					if err != nil {
						t.Error(err)
						return
					}
					switch resp.StatusCode {
					case http.StatusOK:
						okN.Add(1)
						var r struct{ PromptEvalCount, EvalCount int64 }
						var raw map[string]any
						json.Unmarshal(b, &raw) //nolint:errcheck
						r.PromptEvalCount, r.EvalCount = int64(num(raw["prompt_eval_count"])), int64(num(raw["eval_count"]))
						tokN.Add(r.PromptEvalCount + r.EvalCount)
					case http.StatusTooManyRequests:
						refN.Add(1)
						if resp.Header.Get("Retry-After") == "" {
							t.Error("429 without Retry-After")
						}
					default:
						t.Errorf("status %d: %s", resp.StatusCode, b)
					}
				}
			}()
		}
	}
	wg.Wait()
	return okN.Load(), refN.Load(), tokN.Load()
}

func num(v any) float64 { f, _ := v.(float64); return f }

const limitsChat = `{"model":"tiny","stream":false,"messages":[{"role":"user","content":"hello there"}],"options":{"num_predict":5}}`

// TestLimitsHoldAcrossReplicas: a burst spread over three replicas, four
// clients at once on each, against one key's limit. Shared reservations
// and shares of what is left keep what is admitted within the limit plus
// the documented bound (docs/limits.md: one request per other replica);
// without sharing each replica would admit the whole limit.
func TestLimitsHoldAcrossReplicas(t *testing.T) {
	const perReplica = 4
	// The documented bound is one request per other replica while
	// messages arrive within the planned delay (20ms); a machine so loaded
	// that they lag past it can let a replica admit twice on one stale
	// view. The test holds the latter, so that it measures the design, not
	// the scheduler (as TestFleetWideCap does); the figures are logged.
	slack := int64(2 * 2)
	t.Run("requests_per_minute", func(t *testing.T) {
		_, urls, _ := limitedFleet(t, apikey.Limits{RequestsPerMinute: 30}, ollamatest.Config{})
		awayFromMinuteEnd(20 * time.Second)
		ok, refused, _ := burst(t, urls, 90, perReplica, limitsChat)
		t.Logf("requests_per_minute 30 over 3 replicas: admitted %d (overshoot %d), refused %d", ok, ok-30, refused)
		if ok > 30+slack || ok < 30-2*perReplica || refused == 0 {
			t.Fatalf("admitted %d of 90 with a limit of 30 (bound %d)", ok, 30+slack)
		}
	})
	t.Run("tokens_per_day", func(t *testing.T) {
		// Each request reserves len(body)/4 + 5 and spends about 12: the
		// budget admits more requests than its reservations alone would.
		const budget = 1200
		_, urls, _ := limitedFleet(t, apikey.Limits{TokensPerDay: budget}, ollamatest.Config{})
		ok, refused, tokens := burst(t, urls, 300, perReplica, limitsChat)
		est := int64(len(limitsChat)+3)/4 + 5
		t.Logf("tokens_per_day %d over 3 replicas: %d requests served %d tokens (overshoot %d tokens, %.1f%%), refused %d", budget, ok, tokens, tokens-budget, 100*float64(tokens-budget)/budget, refused)
		if tokens > budget+slack*est || refused == 0 {
			t.Fatalf("served %d tokens with a budget of %d (bound %d)", tokens, budget, budget+slack*est)
		}
	})
	t.Run("tokens_per_minute", func(t *testing.T) {
		const tpm = 900
		_, urls, _ := limitedFleet(t, apikey.Limits{TokensPerMinute: tpm}, ollamatest.Config{})
		awayFromMinuteEnd(20 * time.Second)
		ok, refused, tokens := burst(t, urls, 200, perReplica, limitsChat)
		est := int64(len(limitsChat)+3)/4 + 5
		t.Logf("tokens_per_minute %d over 3 replicas: %d requests served %d tokens (overshoot %d), refused %d", tpm, ok, tokens, tokens-tpm, refused)
		if tokens > tpm+slack*est || refused == 0 {
			t.Fatalf("served %d tokens with %d per minute (bound %d)", tokens, tpm, tpm+slack*est)
		}
	})
	t.Run("concurrent", func(t *testing.T) {
		const conc = 3
		reps, urls, fake := limitedFleet(t, apikey.Limits{Concurrent: conc}, ollamatest.Config{Chunks: 4, ChunkDelay: 10 * time.Millisecond})
		body := `{"model":"tiny","stream":true,"messages":[{"role":"user","content":"hello there"}]}`
		ok, refused, _ := burst(t, urls, 120, perReplica, body)
		seen := fake.MaxInFlight("tiny")
		t.Logf("concurrent %d over 3 replicas: backend saw at most %d at once; %d served, %d refused", conc, seen, ok, refused)
		if int64(seen) > conc+slack || refused == 0 || ok == 0 {
			t.Fatalf("backend saw %d at once with concurrent %d (bound %d)", seen, conc, conc+slack)
		}
		for _, r := range reps {
			waitFor(t, func() bool { own, fleet := r.Limits.Outstanding("team"); return own == 0 && fleet == 0 })
		}
	})
}

// TestLimitsNothingLeaks: every way a request can end settles its
// reservation: success, a backend error on every attempt, a client that
// cancels before or during the answer, a model that does not exist
// (answered before routing), a timeout in the queue. A panic is covered in
// package limits (the deferred Release forward.Serve relies on).
func TestLimitsNothingLeaks(t *testing.T) {
	reps, urls, _ := limitedFleet(t, apikey.Limits{Concurrent: 100, TokensPerDay: 1 << 30}, ollamatest.Config{Chunks: 3})
	cases := []struct {
		name string
		body string
		ctx  time.Duration
	}{
		{"success", limitsChat, 0},
		{"error", `{"model":"tiny","stream":false,"messages":[],"fake":{"status":500,"error":"boom"}}`, 0},
		{"unknown model", `{"model":"nope","stream":false,"messages":[]}`, 0},
		{"cancel", `{"model":"tiny","stream":true,"messages":[],"fake":{"hang":true}}`, 50 * time.Millisecond},
		{"cancel mid-stream", `{"model":"tiny","stream":true,"messages":[],"fake":{"hang_after_chunks":1}}`, 100 * time.Millisecond},
	}
	for _, c := range cases {
		var wg sync.WaitGroup
		for i := range 9 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				ctx := context.Background()
				if c.ctx > 0 {
					var cancel context.CancelFunc
					ctx, cancel = context.WithTimeout(ctx, c.ctx)
					defer cancel()
				}
				chatAs(ctx, urls[i%3], teamSecret, c.body) //nolint:errcheck // cancelled ones fail
			}()
		}
		wg.Wait()
	}
	for _, r := range reps {
		waitFor(t, func() bool { own, fleet := r.Limits.Outstanding("team"); return own == 0 && fleet == 0 })
	}

	// A timeout in the queue: one slot per replica, held by hanging
	// requests; the others wait past max_wait and get 503.
	reps, urls, _ = limitedFleet(t, apikey.Limits{Concurrent: 100}, ollamatest.Config{}, func(c *config.Config) {
		c.Routing.MaxConcurrency = 1
		c.Routing.Queue.MaxWait = 100 * time.Millisecond
	})
	hold, release := context.WithCancel(context.Background())
	var held sync.WaitGroup
	for i := range 3 {
		held.Add(1)
		go func() {
			defer held.Done()
			chatAs(hold, urls[i], teamSecret, `{"model":"tiny","stream":true,"messages":[],"fake":{"hang":true}}`) //nolint:errcheck // cancelled
		}()
	}
	for _, r := range reps {
		waitFor(t, func() bool { _, fleet := r.Limits.Outstanding("team"); return fleet == 3 })
	}
	var timedOut atomic.Int64
	var wg sync.WaitGroup
	for i := range 6 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if resp, _, err := chatAs(context.Background(), urls[i%3], teamSecret, limitsChat); err == nil && resp.StatusCode == http.StatusServiceUnavailable {
				timedOut.Add(1)
			}
		}()
	}
	wg.Wait()
	release()
	held.Wait()
	if timedOut.Load() == 0 {
		t.Fatal("no request timed out in the queue: the case was not exercised")
	}
	for _, r := range reps {
		waitFor(t, func() bool { own, fleet := r.Limits.Outstanding("team"); return own == 0 && fleet == 0 })
	}
}

// TestLimitsErrorShapes: the official clients see OpenAI's typed error
// (429, rate_limit_exceeded or insufficient_quota) and Ollama's status
// error; responses of a limited key carry the x-ratelimit-* headers.
func TestLimitsErrorShapes(t *testing.T) {
	reps, urls, _ := limitedFleet(t, apikey.Limits{RequestsPerMinute: 2, TokensPerMonth: 1 << 20}, ollamatest.Config{})
	awayFromMinuteEnd(10 * time.Second)
	resp, _, err := chatAs(context.Background(), urls[0], teamSecret, limitsChat)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("first request: %v %v", resp, err)
	}
	for _, h := range []string{"x-ratelimit-limit-requests", "x-ratelimit-remaining-requests", "x-ratelimit-reset-requests", "x-ratelimit-limit-tokens", "x-ratelimit-remaining-tokens", "x-ratelimit-reset-tokens"} {
		if resp.Header.Get(h) == "" {
			t.Errorf("success without %s", h)
		}
	}
	if got := resp.Header.Get("x-ratelimit-limit-requests"); got != "2" {
		t.Errorf("x-ratelimit-limit-requests %q", got)
	}
	c := openai.NewClient(option.WithBaseURL(urls[1]+"/v1/"), option.WithAPIKey(teamSecret), option.WithMaxRetries(0))
	params := openai.ChatCompletionNewParams{Model: "tiny", Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage("hi")}}
	var oe *openai.Error
	for i := 0; ; i++ {
		_, err := c.Chat.Completions.New(context.Background(), params)
		if err == nil && i < 5 {
			continue // the fleet may not have heard of the first yet
		}
		if !errors.As(err, &oe) || oe.StatusCode != 429 || oe.Code != "rate_limit_exceeded" || oe.Type != "requests" {
			t.Fatalf("want OpenAI's 429 rate_limit_exceeded of type requests, got %v", err)
		}
		if oe.Response.Header.Get("Retry-After") == "" || oe.Response.Header.Get("x-ratelimit-remaining-requests") != "0" {
			t.Errorf("429 headers: %v", oe.Response.Header)
		}
		break
	}
	if n := refusals(t, reps[1], "team", "requests_per_minute"); n < 1 {
		t.Errorf("drover_limit_refusals_total{key=team,reason=requests_per_minute} on the refusing replica: %v", n)
	}
	// The refusal went through finish, as every request's usage event
	// does: drover_requests_total counts it with status 429.
	if n := counter(t, reps[1], "drover_requests_total", map[string]string{"status": "429", "route": "/v1/chat/completions"}); n < 1 {
		t.Errorf("drover_requests_total{status=429} on the refusing replica: %v", n)
	}
	u, _ := url.Parse(urls[2])
	ol := api.NewClient(u, &http.Client{Transport: bearer{teamSecret}})
	err = ol.Chat(context.Background(), &api.ChatRequest{Model: "tiny", Messages: []api.Message{{Role: "user", Content: "hi"}}}, func(api.ChatResponse) error { return nil })
	var se api.StatusError
	if !errors.As(err, &se) || se.StatusCode != 429 || !strings.Contains(se.ErrorMessage, "requests per min") {
		t.Fatalf("want Ollama's 429 status error, got %#v", err)
	}

	// Anthropic's rate_limit_error on /v1/messages.
	req, _ := http.NewRequest(http.MethodPost, urls[0]+"/v1/messages", strings.NewReader(`{"model":"tiny","max_tokens":5,"messages":[{"role":"user","content":"hi"}]}`))
	req.Header.Set("Authorization", "Bearer "+teamSecret)
	aresp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	var ae struct {
		Type  string
		Error struct{ Type, Message string }
	}
	json.NewDecoder(aresp.Body).Decode(&ae) //nolint:errcheck
	aresp.Body.Close()
	if aresp.StatusCode != 429 || ae.Type != "error" || ae.Error.Type != "rate_limit_error" || aresp.Header.Get("Retry-After") == "" {
		t.Fatalf("want Anthropic's 429 rate_limit_error, got %d %+v", aresp.StatusCode, ae)
	}

	// A spent budget is insufficient_quota.
	_, urls2, _ := limitedFleet(t, apikey.Limits{TokensPerDay: 1}, ollamatest.Config{})
	c2 := openai.NewClient(option.WithBaseURL(urls2[0]+"/v1/"), option.WithAPIKey(teamSecret), option.WithMaxRetries(0))
	_, err = c2.Chat.Completions.New(context.Background(), params)
	if !errors.As(err, &oe) || oe.StatusCode != 429 || oe.Code != "insufficient_quota" {
		t.Fatalf("want OpenAI's 429 insufficient_quota, got %v", err)
	}
}

// TestLimitsRestartedReplicaKnowsTheBudget: a replica started after the
// key spent most of its day budget (in ClickHouse, from replicas before)
// refuses what would go over it; a request it admits counts once, though
// its settlement and its event on the usage stream both reach the ledger.
func TestLimitsRestartedReplicaKnowsTheBudget(t *testing.T) {
	ch := chtest.Start(t)
	store, err := chstore.Open(chstore.Options{Addr: ch.Addr(), Database: "drover_limits_restart"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })
	ctx := context.Background()
	if _, err := store.Migrate(ctx); err != nil {
		t.Fatal(err)
	}
	spent := usage.Event{Schema: usage.SchemaVersion, ID: usage.NewID(), Time: time.Now().UTC(),
		Endpoint: "a", Model: "tiny", APIKey: "team", Route: "/api/chat", Status: 200,
		InputTokens: usage.Int64(400), OutputTokens: usage.Int64(570)}
	if err := store.InsertEvents(ctx, []chstore.EventRow{{Event: spent, Partition: 50, Seq: 1}}); err != nil {
		t.Fatal(err)
	}
	ns := natstest.Start(t)
	ensureUsageStream(t, ns.URL())
	fake := ollamatest.New(ollamatest.Config{})
	if err := fake.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(fake.Close)
	cfg := &config.Config{Replica: "restarted", Backends: []config.Backend{{Name: "a", URL: fake.URL()}}}
	cfg.NATS.URL, cfg.NATS.Partitions = ns.URL(), 4
	cfg.Auth.Keys = []config.APIKey{{ID: "team", Key: teamSecret, Limits: apikey.Limits{TokensPerDay: 1010}}}
	loaded, err := config.FromStruct(cfg)
	if err != nil {
		t.Fatal(err)
	}
	opts := natsOptions(t, loaded.NATS)
	opts.ClickHouse = store
	s := New(loaded, slog.New(slog.DiscardHandler), opts)
	t.Cleanup(s.Close)
	url := serve(t, s)
	team := principalOf(t, s, "team")
	waitFor(t, func() bool { st := s.Limits.Status(team); return st.Fleet && st.Spend.TokensToday == 970 })

	// 970 spent + this request's estimate fits 1,010; its real count
	// (prompt 4 + 2 words, 5 out) is what stays.
	resp, b, err := chatAs(ctx, url, teamSecret, limitsChat)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("first request: %v %s %v", resp, b, err)
	}
	var answer struct{ PromptEvalCount, EvalCount int64 }
	var raw map[string]any
	json.Unmarshal(b, &raw) //nolint:errcheck
	answer.PromptEvalCount, answer.EvalCount = int64(num(raw["prompt_eval_count"])), int64(num(raw["eval_count"]))
	real := answer.PromptEvalCount + answer.EvalCount
	// Its event comes back on the stream: no longer pending, counted once.
	waitFor(t, func() bool { return s.Limits.Pending() == 0 && s.Limits.Status(team).Spend.TokensToday == 970+real })

	resp, b, err = chatAs(ctx, url, teamSecret, limitsChat)
	if err != nil || resp.StatusCode != http.StatusTooManyRequests || !strings.Contains(string(b), "quota") {
		t.Fatalf("want 429 over the day budget spent before the start, got %v %s %v", resp, b, err)
	}
	if ra := resp.Header.Get("Retry-After"); ra == "" || ra == "0" {
		t.Errorf("Retry-After %q", ra)
	}
	if st := s.Limits.Status(team); st.Spend.TokensToday != 970+real || st.Spend.InFlight != 0 {
		t.Fatalf("after the refusal: %+v", st.Spend)
	}
}

func principalOf(t *testing.T, s *Server, id string) (p auth.Principal) {
	t.Helper()
	ps := s.Keys.Principals()
	for _, q := range ps {
		if q.ID == id {
			return q
		}
	}
	t.Fatalf("no key %s", id)
	return p
}

// refusals reads drover_limit_refusals_total{key, reason} from a replica's
// metrics registry.
func refusals(t *testing.T, s *Server, key, reason string) float64 {
	t.Helper()
	return counter(t, s, "drover_limit_refusals_total", map[string]string{"key": key, "reason": reason})
}

// counter sums a counter's series that carry labels.
func counter(t *testing.T, s *Server, name string, labels map[string]string) float64 {
	t.Helper()
	families, err := s.Metrics.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var sum float64
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
	series:
		for _, m := range f.GetMetric() {
			have := map[string]string{}
			for _, l := range m.GetLabel() {
				have[l.GetName()] = l.GetValue()
			}
			for k, v := range labels {
				if have[k] != v {
					continue series
				}
			}
			sum += m.GetCounter().GetValue()
		}
	}
	return sum
}
