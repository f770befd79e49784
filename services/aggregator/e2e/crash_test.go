package e2e

import (
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/ollama/ollama/api"
	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"

	"github.com/droverhq/drover/testkit/chtest"
	"github.com/droverhq/drover/testkit/natstest"
	"github.com/droverhq/drover/testkit/ollamatest"
)

// bearer adds a client key to every request of an official client that
// takes no key itself (Ollama's).
type bearer struct{ key string }

func (b bearer) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	r.Header.Set("Authorization", "Bearer "+b.key)
	return http.DefaultTransport.RoundTrip(r)
}

// crashKinds are the requests of the crash test, through the official
// clients: Ollama's /api/chat streamed and not, OpenAI's chat streamed
// (with usage) and not.
const crashKinds = 4

// outcome is what one client saw of one request.
type outcome int

const (
	unreachable outcome = iota // never reached the proxy (it was down): no event can exist
	complete                   // the client saw the whole answer
	inDoubt                    // the proxy died under it: its event may or may not exist
)

// crashCall sends one request of kind through base and returns what the
// client saw, with the counts the answer reported when complete.
func crashCall(t *testing.T, base, key string, kind int) (outcome, tokens) {
	ctx := t.Context()
	msgs := "hello there friend"
	var got tokens
	var err error
	switch kind {
	case 0, 1:
		u, _ := url.Parse(base)
		c := api.NewClient(u, &http.Client{Transport: bearer{key}, Timeout: 30 * time.Second})
		stream := kind == 0
		var final api.ChatResponse
		err = c.Chat(ctx, &api.ChatRequest{Model: "tiny", Stream: &stream, Messages: []api.Message{{Role: "user", Content: msgs}}},
			func(r api.ChatResponse) error { final = r; return nil })
		if err == nil && !final.Done {
			err = errors.New("the answer ended without done")
		}
		got = tokens{int64(final.PromptEvalCount), int64(final.EvalCount)}
	case 2:
		c := openai.NewClient(option.WithBaseURL(base+"/v1/"), option.WithAPIKey(key), option.WithMaxRetries(0),
			option.WithRequestTimeout(30*time.Second))
		var resp *openai.ChatCompletion
		resp, err = c.Chat.Completions.New(ctx, openai.ChatCompletionNewParams{Model: "tiny", Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage(msgs)}})
		if err == nil {
			got = tokens{resp.Usage.PromptTokens, resp.Usage.CompletionTokens}
		}
	case 3:
		c := openai.NewClient(option.WithBaseURL(base+"/v1/"), option.WithAPIKey(key), option.WithMaxRetries(0),
			option.WithRequestTimeout(30*time.Second))
		s := c.Chat.Completions.NewStreaming(ctx, openai.ChatCompletionNewParams{Model: "tiny",
			Messages:      []openai.ChatCompletionMessageParamUnion{openai.UserMessage(msgs)},
			StreamOptions: openai.ChatCompletionStreamOptionsParam{IncludeUsage: openai.Bool(true)}})
		usage := false
		for s.Next() {
			if u := s.Current().Usage; u.TotalTokens > 0 {
				got, usage = tokens{u.PromptTokens, u.CompletionTokens}, true
			}
		}
		if err = s.Err(); err == nil && !usage {
			err = errors.New("the stream ended without its usage")
		}
	}
	switch {
	case err == nil:
		return complete, got
	case errors.Is(err, syscall.ECONNREFUSED):
		return unreachable, tokens{}
	default:
		return inDoubt, tokens{}
	}
}

// TestProxyKill9LosesNothingClientsSawComplete kills drover-proxy
// processes with SIGKILL, again and again, under load from the official
// Ollama and OpenAI clients, and restarts each on its spool. Every answer a
// client saw complete must be in ClickHouse (its event reached the spool
// before the answer's end did), no event may be stored twice, and nothing
// beyond the requests the kills left in doubt may appear.
func TestProxyKill9LosesNothingClientsSawComplete(t *testing.T) {
	ns := natstest.Start(t)
	ch := chtest.Start(t)
	_, urls := startFakes(t, 3, ollamatest.Config{ChunkDelay: 2 * time.Millisecond})
	keys := []string{"key-aaaaaaaa", "key-bbbbbbbb"}
	common := []string{
		"DROVER_NATS_URL=" + ns.URL(),
		"DROVER_CLICKHOUSE_ADDR=" + ch.Addr(),
		"DROVER_BACKENDS=" + strings.Join(urls, ","),
		"DROVER_AUTH_KEYS=team-a:" + keys[0] + ",team-b:" + keys[1] + ",ops:" + adminKey + ":admin",
		"DROVER_ROUTING_MAX_CONCURRENCY=16",
		"DROVER_LOG_LEVEL=warn",
	}
	aggMetrics := freeAddr(t)
	start(t, "drover-aggregator", append(common, "DROVER_AGGREGATOR_METRICS_LISTEN="+aggMetrics, "DROVER_AGGREGATOR_FLUSH_INTERVAL=200ms", "DROVER_REPLICA=agg"))
	type replica struct {
		p    *proc
		env  []string
		base string
	}
	var replicas []*replica
	for i := range 2 {
		addr := freeAddr(t)
		env := append(append([]string(nil), common...), "DROVER_LISTEN="+addr, fmt.Sprintf("DROVER_REPLICA=proxy-%d", i),
			"DROVER_USAGE_SPOOL_DIR="+filepath.Join(t.TempDir(), "spool"))
		replicas = append(replicas, &replica{p: start(t, "drover-proxy", env), env: env, base: "http://" + addr})
	}
	for _, r := range replicas {
		waitHTTP(t, r.base+"/")
	}
	waitHTTP(t, "http://"+aggMetrics+"/health")

	// The load: workers loop over the kinds until told to stop.
	var (
		mu       sync.Mutex
		saw      tokens // what complete answers reported, summed
		perKind  [crashKinds]tokens
		counts   [3]int64 // by outcome
		doubtful [crashKinds]int64
		stop     atomic.Bool
		wg       sync.WaitGroup
	)
	for w := range 24 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; !stop.Load(); i++ {
				kind := (w + i) % crashKinds
				o, tk := crashCall(t, replicas[w%2].base, keys[w%2], kind)
				mu.Lock()
				counts[o]++
				switch o {
				case complete:
					saw.in += tk.in
					saw.out += tk.out
					if perKind[kind] != (tokens{}) && perKind[kind] != tk {
						t.Errorf("kind %d reported %+v, earlier %+v: the bound below needs one count per kind", kind, tk, perKind[kind])
					}
					perKind[kind] = tk
				case inDoubt:
					doubtful[kind]++
				}
				mu.Unlock()
				if o == unreachable {
					time.Sleep(20 * time.Millisecond) // the proxy is restarting
				}
			}
		}()
	}

	// The kills: each replica in turn, every 1.5 s for 15 s, each time
	// once it has served some requests since it came back.
	kills := 0
	for end := time.Now().Add(15 * time.Second); time.Now().Before(end); {
		r := replicas[kills%2]
		before := metricRequests(r.base)
		waitFor(t, 10*time.Second, "the replica to serve requests", func() bool { return metricRequests(r.base) > before+20 })
		time.Sleep(1500 * time.Millisecond)
		r.p.cmd.Process.Signal(syscall.SIGKILL)
		r.p.cmd.Wait()
		kills++
		r.p = start(t, "drover-proxy", r.env)
		waitHTTP(t, r.base+"/")
	}
	stop.Store(true)
	wg.Wait()
	for _, r := range replicas {
		r.p.cmd.Process.Signal(syscall.SIGTERM)
		r.p.cmd.Wait()
	}
	var maxExtra tokens
	for k, n := range doubtful {
		maxExtra.in += n * perKind[k].in
		maxExtra.out += n * perKind[k].out
	}
	t.Logf("%d kill -9s; %d requests complete (%+v tokens), %d in doubt (at most %+v tokens), %d unreachable",
		kills, counts[complete], saw, counts[inDoubt], maxExtra, counts[unreachable])
	if counts[inDoubt] == 0 || counts[complete] == 0 {
		t.Fatalf("no request was cut by a kill (%d) or none completed (%d): the test proved nothing", counts[inDoubt], counts[complete])
	}

	db, err := clickhouse.Open(&clickhouse.Options{Addr: []string{ch.Addr()}, Auth: clickhouse.Auth{Database: "drover", Username: "default"}})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	// Everything the clients saw complete, and no more than that plus what
	// was in doubt; wait for the aggregator to catch up on the replays.
	var got tokens
	var rows, ids, okRows uint64
	for deadline := time.Now().Add(60 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		var in, out uint64
		if db.QueryRow(t.Context(), "SELECT sum(input_tokens) AS i, sum(output_tokens) AS o FROM token_usage_minute").Scan(&in, &out) == nil {
			got = tokens{int64(in), int64(out)}
		}
		if got.in >= saw.in && got.out >= saw.out {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("ClickHouse holds %+v tokens, short of the %+v complete answers reported: usage lost", got, saw)
		}
	}
	if err := db.QueryRow(t.Context(), "SELECT count() AS n, uniqExact(id) AS d, countIf(error = 0) AS ok FROM usage_events").Scan(&rows, &ids, &okRows); err != nil {
		t.Fatal(err)
	}
	t.Logf("ClickHouse: %+v tokens, %d events (%d distinct ids, %d successful)", got, rows, ids, okRows)
	if rows != ids {
		t.Fatalf("%d events stored for %d ids: some stored twice", rows, ids)
	}
	if got.in > saw.in+maxExtra.in || got.out > saw.out+maxExtra.out {
		t.Fatalf("ClickHouse holds %+v tokens, more than the %+v complete plus %+v in doubt", got, saw, maxExtra)
	}
	if okRows < uint64(counts[complete]) || okRows > uint64(counts[complete]+counts[inDoubt]) {
		t.Fatalf("%d successful events for %d complete answers and %d in doubt", okRows, counts[complete], counts[inDoubt])
	}
}

// metricRequests is a proxy's count of requests served so far (0 while it
// is down).
func metricRequests(base string) float64 {
	return metric(base+"/metrics", "drover_requests_total")
}
