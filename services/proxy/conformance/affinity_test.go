package conformance

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ollama/ollama/api"

	"github.com/droverhq/drover/pkg/config"
)

// Issue 15 against real Ollama: eight conversations of six turns, each turn
// sent a few hundred milliseconds after the previous reply, through Drover
// in front of two Ollama servers with four slots each, routed by prefix or
// by least load, and pinned one server per conversation (direct, the best
// case). Ollama's own prompt_eval_duration, summed over the follow-up
// turns, says how much of each history was evaluated again; the wall time
// says what that cost the clients. The figures are logged (go test -v, make
// conformance-affinity) and recorded in docs/routing-bench.md; the test
// asserts only that every turn completed and that Ollama counts a cached
// prompt whole, which the fake backend's prompt cache relies on.
//
// It runs with DROVER_CONFORMANCE=1 and DROVER_AFFINITY=1 (it starts two
// more Ollama servers and takes a minute per round; DROVER_AFFINITY_ROUNDS,
// default 3).

const (
	affConversations = 8
	affTurns         = 6
	affSystemWords   = 200 // shared by every conversation: they drift apart from it
	affUserWords     = 150 // so that a conversation's own history is most of its prompt
	affReplyTokens   = 32
	affThink         = 300 * time.Millisecond
	affParallel      = 4
)

// vocabWords are whole tokens of the tiny models' vocabulary
// (.ci/realollama/tinymodel), so a word is one token.
var vocabWords = strings.Fields("the a an and of to in is it that for on with as was at by be this are " +
	"hello world model router token reply test ok yes no llama tiny random stream chat data " +
	"fast slow one two three four five six seven eight nine ten")

func affText(rng *rand.Rand, n int) string {
	w := make([]string, n)
	for i := range w {
		w[i] = vocabWords[rng.IntN(len(vocabWords))]
	}
	return strings.Join(w, " ")
}

// affRun is one way of sending the conversations and what Ollama said.
type affRun struct {
	name           string
	followUpEval   time.Duration // sum of prompt_eval_duration over turns 2..6
	firstEval      time.Duration // the same over first turns
	followUpTokens int           // sum of prompt_eval_count over turns 2..6
	wall           time.Duration
	// evaluated and cached are the prompt tokens Ollama's runners
	// evaluated and took from a slot's cache over the whole run (all turns),
	// from their debug log: a count, immune to the machine's load.
	evaluated, cached int
}

func TestAffinityRealOllama(t *testing.T) {
	need(t)
	if os.Getenv("DROVER_AFFINITY") != "1" {
		t.Skip("set DROVER_AFFINITY=1 as well (make conformance-affinity): starts two Ollama servers with 4 slots")
	}
	servers := make([]*ollama, 2)
	var wg sync.WaitGroup
	errs := make([]error, 2)
	for i := range servers {
		servers[i] = &ollama{name: fmt.Sprintf("aff%d", i+1)}
		wg.Add(1)
		go func() { defer wg.Done(); errs[i] = servers[i].startParallel(affParallel, "tiny") }()
	}
	wg.Wait()
	for _, s := range servers {
		t.Cleanup(s.stop)
	}
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	direct := make([]*api.Client, len(servers))
	for i, s := range servers {
		u, _ := url.Parse(s.url)
		direct[i] = api.NewClient(u, &http.Client{Timeout: 5 * time.Minute})
	}
	ctx := t.Context()
	for _, c := range direct { // load the model, so no run pays for it
		if _, err := affChat(ctx, c, []api.Message{{Role: "user", Content: "hello"}}); err != nil {
			t.Fatalf("warming: %v", err)
		}
	}

	// What the fake imitates: the same long chat twice on an idle server.
	rng := rand.New(rand.NewPCG(99, 1))
	long := []api.Message{{Role: "system", Content: affText(rng, 600)}, {Role: "user", Content: affText(rng, 500)}}
	cold, err := affChat(ctx, direct[0], long)
	if err != nil {
		t.Fatal(err)
	}
	warm, err := affChat(ctx, direct[0], long)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("same chat twice, direct: prompt_eval_count %d then %d; prompt_eval_duration %v then %v",
		cold.PromptEvalCount, warm.PromptEvalCount, cold.PromptEvalDuration, warm.PromptEvalDuration)
	if cold.PromptEvalCount != warm.PromptEvalCount {
		t.Errorf("prompt_eval_count of a cached prompt: %d, of the same prompt cold: %d; the fake counts it whole",
			warm.PromptEvalCount, cold.PromptEvalCount)
	}

	drovers := map[string]*drover{}
	viaDrover := func(strategy string) func(int) *api.Client {
		d := newDrover(t, func(c *config.Config) {
			c.Backends = []config.Backend{{Name: "aff1", URL: servers[0].url}, {Name: "aff2", URL: servers[1].url}}
			c.Routing.MaxConcurrency = affParallel
			c.Routing.Strategy = strategy
		})
		drovers[strategy] = d
		return func(int) *api.Client { return d.client }
	}
	pinned := func(conv int) *api.Client { return direct[conv%len(direct)] }
	runs := []struct {
		name   string
		client func(conv int) *api.Client
	}{
		{"pinned (direct, one server per conversation)", pinned},
		{"drover least_loaded", viaDrover("least_loaded")},
		{"drover prefix", viaDrover("prefix")},
	}
	// Rounds interleave the three ways, so a burst of load from elsewhere on
	// the machine hits all of them; the summary gives each ratio's median and range.
	rounds := 3
	if n, err := strconv.Atoi(os.Getenv("DROVER_AFFINITY_ROUNDS")); err == nil && n > 0 {
		rounds = n
	}
	evalRatio := make([][]float64, len(runs))
	wallRatio := make([][]float64, len(runs))
	tokRatio := make([][]float64, len(runs))
	for round := range rounds {
		var results []affRun
		for i, r := range runs {
			res, err := affConverse(ctx, r.name, uint64(round*len(runs)+i+1), r.client, servers)
			if err != nil {
				t.Fatalf("round %d, %s: %v", round+1, r.name, err)
			}
			results = append(results, res)
		}
		base := results[0]
		for i, r := range results {
			e, w := r.followUpEval.Seconds()/base.followUpEval.Seconds(), r.wall.Seconds()/base.wall.Seconds()
			tok := float64(r.evaluated) / float64(max(base.evaluated, 1))
			evalRatio[i], wallRatio[i], tokRatio[i] = append(evalRatio[i], e), append(wallRatio[i], w), append(tokRatio[i], tok)
			t.Logf("round %d: %-46s follow-up prompt_eval_duration %6.2fs (%d tokens counted), first turns %5.2fs, wall %5.2fs; "+
				"tokens evaluated %d, from cache %d; vs pinned: eval %.2fx, wall %.2fx, tokens evaluated %.2fx",
				round+1, r.name, r.followUpEval.Seconds(), r.followUpTokens, r.firstEval.Seconds(), r.wall.Seconds(),
				r.evaluated, r.cached, e, w, tok)
		}
	}
	for i, r := range runs[1:] {
		e, w, k := evalRatio[i+1], wallRatio[i+1], tokRatio[i+1]
		slices.Sort(e)
		slices.Sort(w)
		slices.Sort(k)
		t.Logf("%s vs pinned over %d rounds: follow-up prompt_eval_duration median %.2fx (%.2f-%.2f), wall median %.2fx (%.2f-%.2f), tokens evaluated median %.2fx (%.2f-%.2f)",
			r.name, rounds, e[len(e)/2], e[0], e[len(e)-1], w[len(w)/2], w[0], w[len(w)-1], k[len(k)/2], k[0], k[len(k)-1])
	}
	for _, strategy := range []string{"least_loaded", "prefix"} {
		t.Logf("drover %s: %s", strategy, affMetrics(drovers[strategy]))
	}
}

// affMetrics is what Drover's /metrics says about where the chats went,
// and what its slot model held for them.
func affMetrics(d *drover) string {
	rec := httptest.NewRecorder()
	d.srv.MetricsHandler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	var out []string
	for _, line := range strings.Split(rec.Body.String(), "\n") {
		chat := strings.HasPrefix(line, "drover_requests_total{") && strings.Contains(line, `route="/api/chat"`)
		if chat || strings.HasPrefix(line, "drover_affinity_picks_total{") || strings.HasPrefix(line, "drover_affinity_slotted_total{") {
			out = append(out, line)
		}
	}
	return strings.Join(out, "; ")
}

// affConverse runs every conversation at once, each turn after the last
// reply and a pause; seed makes the run's text its own, so no run finds
// another's prompts in the servers' caches.
func affConverse(ctx context.Context, name string, seed uint64, client func(conv int) *api.Client, servers []*ollama) (affRun, error) {
	offsets := make([]int64, len(servers))
	for i, s := range servers {
		offsets[i] = fileSize(s.log)
	}
	rng := rand.New(rand.NewPCG(seed, 2))
	system := affText(rng, affSystemWords)
	users := make([][]string, affConversations)
	for c := range users {
		for range affTurns {
			users[c] = append(users[c], affText(rng, affUserWords))
		}
	}
	res := affRun{name: name}
	var mu sync.Mutex
	var firstErr error
	var wg sync.WaitGroup
	start := time.Now()
	for c := range affConversations {
		wg.Add(1)
		go func() {
			defer wg.Done()
			msgs := []api.Message{{Role: "system", Content: system}}
			for turn := range affTurns {
				if turn > 0 {
					time.Sleep(affThink) // the user's think time: workload, not synchronisation
				}
				msgs = append(msgs, api.Message{Role: "user", Content: users[c][turn]})
				m, err := affChat(ctx, client(c), msgs)
				mu.Lock()
				if err != nil {
					firstErr = errors.Join(firstErr, fmt.Errorf("conversation %d turn %d: %w", c, turn+1, err))
				} else if turn == 0 {
					res.firstEval += m.PromptEvalDuration
				} else {
					res.followUpEval += m.PromptEvalDuration
					res.followUpTokens += m.PromptEvalCount
				}
				mu.Unlock()
				if err != nil {
					return
				}
				msgs = append(msgs, api.Message{Role: "assistant", Content: m.reply})
			}
		}()
	}
	wg.Wait()
	res.wall = time.Since(start)
	for i, s := range servers {
		used, remaining, err := cacheLog(s.log, offsets[i])
		if err != nil {
			return res, err
		}
		res.cached += used
		res.evaluated += remaining
	}
	return res, firstErr
}

func fileSize(path string) int64 {
	fi, err := os.Stat(path)
	if err != nil {
		return 0
	}
	return fi.Size()
}

// cacheLog sums the used (from cache) and remaining (evaluated) prompt
// tokens of the runner's "loading cache slot" debug lines after offset.
func cacheLog(path string, offset int64) (used, remaining int, err error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, 0, err
	}
	if offset > int64(len(b)) {
		offset = 0
	}
	for _, line := range strings.Split(string(b[offset:]), "\n") {
		if !strings.Contains(line, `msg="loading cache slot"`) {
			continue
		}
		for _, f := range strings.Fields(line) {
			if v, ok := strings.CutPrefix(f, "used="); ok {
				n, _ := strconv.Atoi(v)
				used += n
			}
			if v, ok := strings.CutPrefix(f, "remaining="); ok {
				n, _ := strconv.Atoi(v)
				remaining += n
			}
		}
	}
	return used, remaining, nil
}

type affReply struct {
	api.Metrics
	reply string
}

// affChat sends one streamed chat with the official client.
func affChat(ctx context.Context, c *api.Client, msgs []api.Message) (affReply, error) {
	var out affReply
	var b strings.Builder
	req := &api.ChatRequest{Model: "tiny", Messages: msgs, Options: map[string]any{"num_predict": affReplyTokens}}
	err := c.Chat(ctx, req, func(r api.ChatResponse) error {
		b.WriteString(r.Message.Content)
		if r.Done {
			out.Metrics = r.Metrics
		}
		return nil
	})
	out.reply = b.String()
	if err == nil && out.PromptEvalCount == 0 {
		err = errors.New("no final chunk with prompt_eval_count")
	}
	return out, err
}

// startParallel is start with OLLAMA_NUM_PARALLEL=parallel and only the
// given models.
func (o *ollama) startParallel(parallel int, models ...string) error {
	return o.serve(models, fmt.Sprintf("OLLAMA_NUM_PARALLEL=%d", parallel), "OLLAMA_MAX_LOADED_MODELS=1",
		"OLLAMA_DEBUG=1") // the runner logs each request's cached and evaluated tokens (cacheLog)
}
