package e2e

// Load from the official Ollama Go client (github.com/ollama/ollama/api),
// each request run to completion, and the check that ClickHouse holds
// exactly what the clients saw complete.

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/ollama/ollama/api"
)

type bearerKey string

func (k bearerKey) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	if k != "" {
		r.Header.Set("Authorization", "Bearer "+string(k))
	}
	return http.DefaultTransport.RoundTrip(r)
}

func ollamaClient(base, key string) *api.Client {
	u, err := url.Parse(base)
	if err != nil {
		panic(err)
	}
	return api.NewClient(u, &http.Client{Transport: bearerKey(key), Timeout: 60 * time.Second})
}

type clientErr struct {
	at  time.Time
	err error
}

func (e clientErr) String() string { return e.at.Format(time.StampMilli) + " " + e.err.Error() }

// clusterLoad runs requests until stop, each to completion: what a client
// saw complete is summed per (model, key), failures are kept.
type clusterLoad struct {
	stopping atomic.Bool
	wg       sync.WaitGroup
	done     atomic.Int64

	mu   sync.Mutex // guards want, n and errs
	want map[key]tokens
	n    map[key]int64
	errs []clientErr
}

func startClusterLoad(t *testing.T, bases []string) *clusterLoad {
	l := &clusterLoad{want: map[key]tokens{}, n: map[key]int64{}}
	keys := map[string]string{"team-a": "key-aaaaaaaa", "team-b": "key-bbbbbbbb"}
	for w := range 12 {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			for i := w; !l.stopping.Load(); i += 12 {
				id := []string{"team-a", "team-b"}[i%2]
				model, m, err := ollamaRequest(ollamaClient(bases[(i/2)%len(bases)], keys[id]), i%3 == 0)
				l.record(model, id, m, err)
			}
		}()
	}
	t.Cleanup(l.stop)
	return l
}

// ollamaRequest runs one request to completion: a non-streamed generate
// of tiny2, or a streamed chat with tiny. It returns the final counts.
func ollamaRequest(c *api.Client, generate bool) (string, api.Metrics, error) {
	var m api.Metrics
	var err error
	model := "tiny"
	if generate {
		model = "tiny2"
		noStream := false
		err = c.Generate(context.Background(), &api.GenerateRequest{Model: model, Prompt: "say something", Stream: &noStream},
			func(r api.GenerateResponse) error {
				if r.Done {
					m = r.Metrics
				}
				return nil
			})
	} else {
		err = c.Chat(context.Background(), &api.ChatRequest{Model: model, Messages: []api.Message{{Role: "user", Content: "hello there"}}},
			func(r api.ChatResponse) error {
				if r.Done {
					m = r.Metrics
				}
				return nil
			})
	}
	if err == nil && m.EvalCount == 0 {
		err = fmt.Errorf("%s: the answer ended without its final counts", model)
	}
	return model, m, err
}

// record counts a request the client saw complete, or keeps its error.
func (l *clusterLoad) record(model, id string, m api.Metrics, err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if err != nil {
		l.errs = append(l.errs, clientErr{time.Now(), err})
		return
	}
	k := key{model, id}
	w := l.want[k]
	w.in += int64(m.PromptEvalCount)
	w.out += int64(m.EvalCount)
	l.want[k] = w
	l.n[k]++
	l.done.Add(1)
}

func (l *clusterLoad) completed() int64 { return l.done.Load() }

func (l *clusterLoad) waitCompleted(t *testing.T, n int64) {
	t.Helper()
	waitFor(t, 2*time.Minute, fmt.Sprintf("%d requests completed", n), func() bool { return l.completed() >= n })
}

// stop lets every request in flight finish and starts no more.
func (l *clusterLoad) stop() {
	l.stopping.Store(true)
	l.wg.Wait()
}

func (l *clusterLoad) errors() []clientErr {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.errs)
}

// checkClickHouseHolds waits until ClickHouse's per-minute rollup holds,
// per model and key, exactly the requests and tokens the clients saw
// complete. Groups no client saw complete must hold no tokens (a refused
// request may be counted, with none).
func checkClickHouseHolds(t *testing.T, addr string, l *clusterLoad) {
	t.Helper()
	db, err := clickhouse.Open(&clickhouse.Options{Addr: []string{addr}, Auth: clickhouse.Auth{Database: "drover", Username: "default"}})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	type row struct {
		tokens
		requests int64
	}
	want := map[key]row{}
	l.mu.Lock()
	for k, tk := range l.want {
		want[k] = row{tk, l.n[k]}
	}
	l.mu.Unlock()
	var problems []string
	deadline := time.Now().Add(90 * time.Second)
	for {
		got := map[key]row{}
		rows, err := db.Query(t.Context(), "SELECT model, api_key, sum(input_tokens), sum(output_tokens), sum(requests) FROM token_usage_minute GROUP BY model, api_key")
		if err == nil {
			for rows.Next() {
				var model, apiKey string
				var in, out, n uint64
				if rows.Scan(&model, &apiKey, &in, &out, &n) == nil {
					got[key{model, apiKey}] = row{tokens{int64(in), int64(out)}, int64(n)}
				}
			}
			rows.Close()
		}
		problems = problems[:0]
		for k, w := range want {
			if g := got[k]; g != w {
				problems = append(problems, fmt.Sprintf("model %s key %s: ClickHouse %d requests %d/%d tokens, clients saw %d requests %d/%d",
					k.model, k.apiKey, g.requests, g.in, g.out, w.requests, w.in, w.out))
			}
		}
		for k, g := range got {
			if _, ok := want[k]; !ok && g.tokens != (tokens{}) {
				problems = append(problems, fmt.Sprintf("ClickHouse holds %d/%d tokens for model %s key %s, which no client saw complete", g.in, g.out, k.model, k.apiKey))
			}
		}
		if len(problems) == 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	for _, p := range problems {
		t.Error(p)
	}
}
