package conformance

import (
	"context"
	"encoding/json"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/droverhq/drover/pkg/config"
)

// requestsBy counts the requests each backend served for model, from
// Drover's own totals.
func requestsBy(d *drover, model string) map[string]int64 {
	out := map[string]int64{}
	for ep, models := range d.srv.Totals.Snapshot() {
		out[ep] = models[model].Requests
	}
	return out
}

func delta(after, before map[string]int64) map[string]int64 {
	out := map[string]int64{}
	for k, v := range after {
		if v-before[k] != 0 {
			out[k] = v - before[k]
		}
	}
	return out
}

// unloadEverywhere unloads model on both servers directly.
func unloadEverywhere(t *testing.T, model string) {
	t.Helper()
	for _, o := range []*ollama{srvA, srvB} {
		r := send(t, "POST", o.url+"/api/generate", `{"model":"`+model+`","keep_alive":0,"stream":false}`)
		if r.status != http.StatusOK {
			t.Fatalf("unloading %s on %s: %d %s", model, o.name, r.status, r.body)
		}
	}
	waitUntil(t, "model unloaded on both", func() bool { return !loadedOn(t, srvA, model) && !loadedOn(t, srvB, model) })
}

// loadedOn asks the server itself whether model is loaded.
func loadedOn(t *testing.T, o *ollama, model string) bool {
	r := send(t, "GET", o.url+"/api/ps", "")
	var ps struct {
		Models []struct {
			Name string `json:"name"`
		} `json:"models"`
	}
	if err := json.Unmarshal(r.body, &ps); err != nil {
		t.Fatalf("ps on %s: %v", o.name, err)
	}
	for _, m := range ps.Models {
		if m.Name == model+":latest" {
			return true
		}
	}
	return false
}

// droverSeesLoaded reports whether Drover's cached view has model loaded on
// backend, as routing reads it (no fetch of its own).
func droverSeesLoaded(d *drover, backend, model string) bool {
	b, _ := d.srv.Fleet.Backend(backend)
	l, err := d.srv.Fleet.Loaded(context.Background(), b)
	return err == nil && l.Has(model)
}

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting until %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func chatThrough(t *testing.T, base, model string, extra string) map[string]any {
	t.Helper()
	r := send(t, "POST", base+"/api/chat", `{"model":"`+model+`",`+hi+`,"stream":false`+extra+`}`)
	if r.status != http.StatusOK {
		t.Fatalf("chat %s: %d %s", model, r.status, r.body)
	}
	var out map[string]any
	if err := json.Unmarshal(r.body, &out); err != nil {
		t.Fatal(err)
	}
	return out
}

// TestRoutingFollowsLoadedModels: a model loaded on one server draws
// Drover's requests there; keep_alive 0 unloads it, Drover notices, and a
// load elsewhere moves the requests.
func TestRoutingFollowsLoadedModels(t *testing.T) {
	need(t)
	const model = "tiny-fixed"
	unloadEverywhere(t, model)
	// A short loaded-models TTL keeps the test quick; the default (10s)
	// only changes how soon Drover notices.
	d := newDrover(t, func(c *config.Config) { c.Cache.LoadedTTL = 200 * time.Millisecond; c.Cache.LoadedStale = time.Second })

	// Load it on B behind Drover's back: without the loaded preference,
	// Drover's tie-break would pick A (first in order).
	send(t, "POST", srvB.url+"/api/generate", `{"model":"`+model+`","stream":false}`)
	waitUntil(t, "Drover sees tiny-fixed loaded on b", func() bool { return droverSeesLoaded(d, "b", model) })
	before := requestsBy(d, model)
	for range 6 {
		chatThrough(t, d.url, model, `,"options":{"num_predict":4}`)
	}
	if got := delta(requestsBy(d, model), before); got["b"] != 6 {
		t.Fatalf("loaded on b only: requests went %v, want all 6 on b", got)
	}
	if loadedOn(t, srvA, model) {
		t.Fatal("a loaded the model although every request should have gone to b")
	}

	// keep_alive 0 through Drover unloads it where it is loaded (b).
	before = requestsBy(d, model)
	r := send(t, "POST", d.url+"/api/generate", `{"model":"`+model+`","keep_alive":0,"stream":false}`)
	if r.status != http.StatusOK || !json.Valid(r.body) {
		t.Fatalf("unload through Drover: %d %s", r.status, r.body)
	}
	if got := delta(requestsBy(d, model), before); got["b"] != 1 {
		t.Fatalf("unload went %v, want b", got)
	}
	waitUntil(t, "b unloads tiny-fixed", func() bool { return !loadedOn(t, srvB, model) })
	waitUntil(t, "Drover notices the unload", func() bool { return !droverSeesLoaded(d, "b", model) })
	var merged struct {
		Models []json.RawMessage `json:"models"`
	}
	ps := send(t, "GET", d.url+"/api/ps", "")
	if err := json.Unmarshal(ps.body, &merged); err != nil {
		t.Fatal(err)
	}
	for _, m := range merged.Models {
		var e struct{ Name string }
		json.Unmarshal(m, &e) //nolint:errcheck // checked by Name
		if e.Name == model+":latest" {
			t.Fatalf("Drover's /api/ps still lists %s after keep_alive 0: %s", model, m)
		}
	}

	// Now loaded on A only: requests follow.
	send(t, "POST", srvA.url+"/api/generate", `{"model":"`+model+`","stream":false}`)
	waitUntil(t, "Drover sees tiny-fixed loaded on a", func() bool { return droverSeesLoaded(d, "a", model) })
	before = requestsBy(d, model)
	for range 4 {
		chatThrough(t, d.url, model, `,"options":{"num_predict":4}`)
	}
	if got := delta(requestsBy(d, model), before); got["a"] != 4 {
		t.Fatalf("loaded on a only: requests went %v, want all 4 on a", got)
	}
}

// TestQueueInDroverNotOllama: both servers run OLLAMA_NUM_PARALLEL=1 and
// Drover caps each at 1. A burst spreads over both servers and waits in
// Drover's queue; no request waits inside Ollama. Ollama's total_duration
// starts when its handler does, so time spent queued inside Ollama shows as
// total_duration well above load + prompt_eval + eval: the same burst sent
// straight to one server shows it, through Drover it must not.
func TestQueueInDroverNotOllama(t *testing.T) {
	need(t)
	const model, burst = "tiny-fixed", 6
	body := `{"model":"` + model + `",` + hi + `,"stream":false,"options":{"num_predict":400}}`
	d := newDrover(t, func(c *config.Config) {
		c.Routing.MaxConcurrency = 1
		c.Routing.Queue.MaxWait = 2 * time.Minute
	})
	for _, o := range []*ollama{srvA, srvB} {
		chatThrough(t, o.url, model, "") // loaded on both: no load time in the numbers
	}

	run := func(base string) (waits []time.Duration, evals []time.Duration) {
		var mu sync.Mutex
		var wg sync.WaitGroup
		for range burst {
			wg.Add(1)
			go func() {
				defer wg.Done()
				r := send(t, "POST", base+"/api/chat", body)
				var m struct {
					Total, Load, Prompt, Eval int64
				}
				var raw map[string]any
				if r.status != http.StatusOK || json.Unmarshal(r.body, &raw) != nil {
					t.Errorf("chat: %d %s", r.status, r.body)
					return
				}
				num := func(k string) int64 { f, _ := raw[k].(float64); return int64(f) }
				m.Total, m.Load, m.Prompt, m.Eval = num("total_duration"), num("load_duration"), num("prompt_eval_duration"), num("eval_duration")
				mu.Lock()
				waits = append(waits, time.Duration(m.Total-m.Load-m.Prompt-m.Eval))
				evals = append(evals, time.Duration(m.Eval))
				mu.Unlock()
			}()
		}
		wg.Wait()
		return waits, evals
	}

	// Baseline: straight to A, the burst queues inside Ollama.
	waits, evals := run(srvA.url)
	if maxOf(waits) < minOf(evals) {
		t.Fatalf("direct burst did not queue in Ollama (waits %v, evals %v): the measure is blind", waits, evals)
	}
	t.Logf("direct to one server: longest wait inside Ollama %s", maxOf(waits))

	// Through Drover: sample its queue and in-flight counts meanwhile.
	stop := make(chan struct{})
	var maxQueue, maxPerBackend int
	var sampler sync.WaitGroup
	sampler.Add(1)
	go func() {
		defer sampler.Done()
		for {
			select {
			case <-stop:
				return
			case <-time.After(2 * time.Millisecond):
			}
			maxQueue = max(maxQueue, d.srv.Router.QueueLen())
			for _, models := range d.srv.Router.InFlight() {
				maxPerBackend = max(maxPerBackend, models[model+":latest"], models[model])
			}
		}
	}()
	before := requestsBy(d, model)
	waits, evals = run(d.url)
	close(stop)
	sampler.Wait()
	spread := delta(requestsBy(d, model), before)
	t.Logf("through Drover: served %v, queue up to %d, in flight per server up to %d, longest wait inside Ollama %s", spread, maxQueue, maxPerBackend, maxOf(waits))
	if spread["a"] == 0 || spread["b"] == 0 || spread["a"]+spread["b"] != burst {
		t.Errorf("burst of %d went %v, want it spread over a and b", burst, spread)
	}
	if maxQueue == 0 {
		t.Error("nothing ever waited in Drover's queue")
	}
	if maxPerBackend > 1 {
		t.Errorf("Drover let %d requests run at once on one server, cap is 1", maxPerBackend)
	}
	// Queued behind another request inside Ollama costs at least that
	// request's eval time.
	if maxOf(waits) >= minOf(evals) {
		t.Errorf("a request waited %s inside Ollama (evals %v): queued there, not in Drover", maxOf(waits), evals)
	}
}

func maxOf(ds []time.Duration) time.Duration {
	var m time.Duration
	for _, d := range ds {
		m = max(m, d)
	}
	return m
}

func minOf(ds []time.Duration) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	m := ds[0]
	for _, d := range ds {
		m = min(m, d)
	}
	return m
}
