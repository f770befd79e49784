package ollamatest

import (
	"context"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestFaults(t *testing.T) {
	e := start(t, Config{Chunks: 5})
	chat := func(fake string) string {
		return `{"model":"tiny","messages":[{"role":"user","content":"x"}],"fake":` + fake + `}`
	}
	cases := []struct {
		name, body string
		status     int
		lines      int    // complete NDJSON lines expected
		cut        bool   // read must fail
		last       string // substring of the body's end
	}{
		{"status", chat(`{"status":502,"error":"boom"}`), 502, 0, false, `{"error":"boom"}`},
		{"status text", chat(`{"status":503}`), 503, 0, false, `{"error":"Service Unavailable"}`},
		{"fail after 2", chat(`{"fail_after_chunks":2}`), 200, 2, true, "},\"done\":false}\n"},
		{"fail before final", chat(`{"fail_after_chunks":99}`), 200, 5, true, "},\"done\":false}\n"},
		{"error after 3", chat(`{"error_after_chunks":3,"error":"runner died"}`), 200, 4, false, `{"error":"runner died"}` + "\n"},
		{"non-stream error", `{"model":"tiny","stream":false,"messages":[],"fake":{"status":429}}`, 429, 0, false, `{"error":"Too Many Requests"}`},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := e.post("/api/chat", c.body)
			if r.status != c.status || (r.err != nil) != c.cut || !strings.HasSuffix(string(r.body), c.last) {
				t.Fatalf("= %d err=%v %q", r.status, r.err, r.body)
			}
			if c.lines > 0 && strings.Count(string(r.body), "\n") != c.lines {
				t.Fatalf("%d lines, want %d: %s", strings.Count(string(r.body), "\n"), c.lines, r.body)
			}
		})
	}
	if got := e.s.Counters(); got.Completed != 0 || got.Cut != 2 || got.EvalCount != 0 {
		t.Errorf("Counters = %+v: faulted replies must not count", got)
	}
}

func TestHangReleasedByClient(t *testing.T) {
	e := start(t, Config{})
	for _, body := range []string{
		`{"model":"tiny","prompt":"x","fake":{"hang":true}}`,
		`{"model":"tiny","prompt":"x","fake":{"hang_after_chunks":1}}`,
	} {
		ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		req, _ := http.NewRequestWithContext(ctx, "POST", e.s.URL()+"/api/generate", strings.NewReader(body))
		start := time.Now()
		resp, err := e.client.Do(req)
		if err == nil {
			_, err = readAll(resp)
		}
		cancel()
		if err == nil || time.Since(start) < 90*time.Millisecond {
			t.Errorf("%s: err=%v after %v, want a timeout", body, err, time.Since(start))
		}
	}
}

func readAll(resp *http.Response) ([]byte, error) {
	defer resp.Body.Close()
	var b strings.Builder
	buf := make([]byte, 512)
	for {
		n, err := resp.Body.Read(buf)
		b.Write(buf[:n])
		if err != nil {
			if err.Error() == "EOF" {
				return []byte(b.String()), nil
			}
			return []byte(b.String()), err
		}
	}
}

func TestServerKnobs(t *testing.T) {
	e := start(t, Config{Chunks: 1})
	body := `{"model":"tiny","prompt":"x","stream":false}`
	e.s.SetFailure(500, "all broken")
	if r := e.post("/api/generate", body); r.status != 500 || string(r.body) != `{"error":"all broken"}` {
		t.Errorf("SetFailure: %d %s", r.status, r.body)
	}
	if r := e.do("GET", "/api/tags", ""); r.status != 200 {
		t.Errorf("SetFailure must leave /api/tags alone: %d", r.status)
	}
	e.s.SetFailure(0, "")

	e.s.SetHang(true)
	done := make(chan reply)
	go func() { done <- e.post("/api/generate", body) }()
	select {
	case r := <-done:
		t.Fatalf("answered while hanging: %+v", r)
	case <-time.After(50 * time.Millisecond):
	}
	e.s.SetHang(false)
	if r := <-done; r.status != 200 {
		t.Errorf("after SetHang(false): %d %s", r.status, r.body)
	}

	e.s.RemoveModel("tiny")
	if r := e.post("/api/generate", body); r.status != 404 {
		t.Errorf("removed model: %d", r.status)
	}
	e.s.AddModel(Model{Name: "tiny"})
	if r := e.post("/api/generate", body); r.status != 200 {
		t.Errorf("re-added model: %d", r.status)
	}
	e.s.SetLoaded("tiny2", "nope")
	if got := e.s.Loaded(); len(got) != 1 || got[0] != "tiny2:latest" {
		t.Errorf("Loaded = %v", got)
	}
}

func TestParallelCapAndQueue(t *testing.T) {
	e := start(t, Config{Parallel: 2, MaxQueue: 2, ChunkDelay: 20 * time.Millisecond, Chunks: 3})
	const n = 8
	var wg sync.WaitGroup
	statuses := make(chan int, n)
	for range n {
		wg.Go(func() {
			statuses <- e.post("/api/chat", `{"model":"tiny","messages":[{"role":"user","content":"x"}]}`).status
		})
	}
	wg.Wait()
	close(statuses)
	count := map[int]int{}
	for s := range statuses {
		count[s]++
	}
	// 2 run, 2 wait, the rest are refused.
	if count[200] != 4 || count[503] != 4 {
		t.Errorf("statuses = %v, want 4×200 and 4×503", count)
	}
	if m := e.s.MaxInFlight("tiny"); m != 2 {
		t.Errorf("MaxInFlight = %d, want 2", m)
	}
	if m := e.s.InFlight("tiny:latest"); m != 0 {
		t.Errorf("InFlight = %d after all done", m)
	}
	r := e.post("/api/chat", `{"model":"tiny","messages":[{"role":"user","content":"x"}],"fake":{"status":503,"error":"server busy, please try again.  maximum pending requests exceeded"}}`)
	if r.status != 503 {
		t.Errorf("fault 503: %d", r.status)
	}
}

// The Responses stream's faults, as Ollama's Responses layer shows a
// runner that fails (error_after_chunks: the deltas so far, then a clean
// end with no response.completed and no error event) or a dropped
// connection (fail_after_chunks); non-streamed, a 500 or no answer.
func TestResponsesFaults(t *testing.T) {
	e := start(t, Config{Chunks: 5})
	body := func(stream bool, fake string) string {
		return `{"model":"tiny","input":"x","stream":` + map[bool]string{true: "true", false: "false"}[stream] + `,"fake":` + fake + `}`
	}
	r := e.post("/v1/responses", body(true, `{"error_after_chunks":2}`))
	if r.status != 200 || r.err != nil || strings.Count(string(r.body), "event: response.output_text.delta") != 2 ||
		strings.Contains(string(r.body), "response.completed") || strings.Contains(string(r.body), "event: error") || !strings.HasSuffix(string(r.body), "}\n\n") {
		t.Fatalf("error_after_chunks: %d err=%v %s", r.status, r.err, r.body)
	}
	r = e.post("/v1/responses", body(true, `{"error_after_chunks":0}`))
	if r.err != nil || strings.Contains(string(r.body), "output_item.added") || strings.Contains(string(r.body), "response.completed") {
		t.Fatalf("error_after_chunks 0: err=%v %s", r.err, r.body)
	}
	r = e.post("/v1/responses", body(true, `{"fail_after_chunks":3}`))
	if r.err == nil || strings.Count(string(r.body), "event: response.output_text.delta") != 3 || strings.Contains(string(r.body), "response.completed") {
		t.Fatalf("fail_after_chunks: err=%v %s", r.err, r.body)
	}
	r = e.post("/v1/responses", body(false, `{"error_after_chunks":1,"error":"runner died"}`))
	if r.status != 500 || !strings.Contains(string(r.body), "runner died") {
		t.Fatalf("non-stream error: %d %s", r.status, r.body)
	}
	r = e.post("/v1/responses", body(true, `{}`))
	if r.err != nil || !strings.Contains(string(r.body), "response.completed") {
		t.Fatalf("no fault: err=%v %s", r.err, r.body)
	}
	if got := e.s.Counters(); got.Completed != 1 || got.Cut != 1 {
		t.Errorf("Counters = %+v: faulted replies must not count", got)
	}
}
