package conformance

import (
	"encoding/json"
	"net/http"
	"sync"
	"testing"

	"github.com/droverhq/drover/pkg/config"
)

// TestTokenTotals: what Drover counts equals the prompt_eval_count and
// eval_count the real servers sent, over streaming and not, chat, generate
// and embed, sampled and fixed-length replies, on both servers.
func TestTokenTotals(t *testing.T) {
	need(t)
	d := newDrover(t, func(c *config.Config) { c.Routing.MaxConcurrency = 1 })
	type req struct{ path, body string }
	reqs := []req{
		{"/api/chat", `{"model":"tiny-fixed",` + hi + `}`},
		{"/api/chat", `{"model":"tiny-fixed",` + hi + `,"stream":false,"options":{"num_predict":7}}`},
		{"/api/generate", `{"model":"tiny-fixed","prompt":"one two three","options":{"num_predict":11}}`},
		{"/api/generate", `{"model":"tiny-fixed","prompt":"one two three","stream":false}`},
		{"/api/chat", `{"model":"tiny",` + hi + `}`},
		{"/api/generate", `{"model":"tiny2","prompt":"hello","stream":false}`},
		{"/api/chat", `{"model":"tiny-alias",` + hi + `,"options":{"num_predict":50}}`},
		{"/api/embed", `{"model":"tiny-embed","input":["hello","there friend"]}`},
		{"/api/embeddings", `{"model":"tiny-embed","prompt":"hello"}`}, // reports no counts
		{"/api/generate", `{"model":"tiny"}`},                          // load only: no counts
		{"/api/chat", `{"model":"nope",` + hi + `}`},                   // 404: no counts
	}
	// tiny-fixed never stops early: the counts are exact, and the same
	// as the server gives directly.
	ref := chatThrough(t, srvA.url, "tiny-fixed", `,"options":{"num_predict":7}`)
	if ref["eval_count"] != 7.0 {
		t.Fatalf("tiny-fixed directly: eval_count %v, want 7", ref["eval_count"])
	}
	var mu sync.Mutex
	var wantIn, wantOut int64
	for round := range 3 {
		// Each round at once: with a cap of 1 they spread over both servers.
		var wg sync.WaitGroup
		for i, rq := range reqs {
			wg.Add(1)
			go func() {
				defer wg.Done()
				r := send(t, "POST", d.url+rq.path, rq.body)
				ls := lines(r.body)
				if len(ls) == 0 {
					t.Errorf("%s %s: empty answer", rq.path, rq.body)
					return
				}
				var last map[string]any
				if err := json.Unmarshal(ls[len(ls)-1], &last); err != nil {
					t.Errorf("%s: %v", rq.path, err)
					return
				}
				in, _ := last["prompt_eval_count"].(float64)
				out, _ := last["eval_count"].(float64)
				mu.Lock()
				wantIn += int64(in)
				wantOut += int64(out)
				mu.Unlock()
				if r.status == http.StatusOK && i == 1 && (in != ref["prompt_eval_count"] || out != 7) {
					t.Errorf("round %d: tiny-fixed with num_predict 7: prompt_eval_count %v eval_count %v, want %v and 7", round, in, out, ref["prompt_eval_count"])
				}
			}()
		}
		wg.Wait()
	}
	var gotIn, gotOut, requests int64
	perEndpoint := map[string]int64{}
	for ep, models := range d.srv.Totals.Snapshot() {
		for _, c := range models {
			gotIn += c.InputTokens
			gotOut += c.OutputTokens
			requests += c.Requests
			perEndpoint[ep] += c.Requests
		}
	}
	t.Logf("%d requests %v: prompt %d, eval %d", requests, perEndpoint, gotIn, gotOut)
	if perEndpoint["a"] == 0 || perEndpoint["b"] == 0 {
		t.Errorf("requests went %v, want both servers used", perEndpoint)
	}
	if gotIn != wantIn || gotOut != wantOut {
		t.Fatalf("Drover counted prompt %d + eval %d, the servers sent %d + %d", gotIn, gotOut, wantIn, wantOut)
	}
	if wantOut == 0 || wantIn == 0 {
		t.Fatal("no tokens at all: the test is blind")
	}
}
