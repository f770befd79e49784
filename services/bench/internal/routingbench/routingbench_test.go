package routingbench

import (
	"bytes"
	"encoding/xml"
	"io"
	"math"
	"net/http"
	"reflect"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/droverhq/drover/testkit/ollamatest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestScheduleRatesPopularityAndTurns(t *testing.T) {
	w := DefaultWorkload()
	steps := []Step{{Rate: 20, Duration: 100 * time.Second}, {Rate: 60, Duration: 100 * time.Second}}
	sessions := w.Schedule(steps, 7)
	again := w.Schedule(steps, 7)
	if !reflect.DeepEqual(again, sessions) {
		t.Fatal("the same seed gave another schedule")
	}
	var reqs [2]float64
	groups := make([]int, w.Groups)
	multi := 0
	for i, s := range sessions {
		if i > 0 && s.At < sessions[i-1].At {
			t.Fatalf("session %d starts before session %d", i, i-1)
		}
		if len(s.Think) != s.Turns-1 {
			t.Fatalf("session %d: %d turns but %d think times", i, s.Turns, len(s.Think))
		}
		reqs[min(int(s.At/(100*time.Second)), 1)] += float64(s.Turns)
		groups[s.Group]++
		if s.Turns > 1 {
			multi++
		}
	}
	// Poisson counts: 2,000 and 6,000 requests expected; allow 10 %.
	for i, want := range []float64{2000, 6000} {
		if math.Abs(reqs[i]-want) > want/10 {
			t.Errorf("step %d: %.0f requests, want about %.0f", i, reqs[i], want)
		}
	}
	if share := float64(multi) / float64(len(sessions)); math.Abs(share-w.MultiTurn) > 0.03 {
		t.Errorf("multi-turn share %.3f, want %.2f", share, w.MultiTurn)
	}
	// Zipf with exponent 1: group 0 about twice group 1 and four times group 3.
	if groups[0] < groups[1] || groups[1] < groups[3] || groups[0] < 3*groups[3] {
		t.Errorf("popularity not Zipf-like: %v", groups[:8])
	}
	if w.System(0) == w.System(1) || len(strings.Fields(w.System(5))) != w.SystemWords {
		t.Error("system prompts must differ per group and have SystemWords words")
	}
	if w.User(1, 0) == w.User(1, 1) || len(strings.Fields(w.User(3, 2))) != w.UserWords {
		t.Error("user messages must be new text of UserWords words")
	}
	// Four bytes a word: Drover's estimate (bytes / 4) is about the fake
	// backend's count (a token a word), as for English at a real tokenizer.
	if n := len(w.System(7)); n != 4*w.SystemWords-1 {
		t.Errorf("system prompt of %d words is %d bytes, want %d", w.SystemWords, n, 4*w.SystemWords-1)
	}
	// Groups differ in their first words, so in their first hashed block.
	firsts := map[string]int{}
	for g := range 20000 {
		k := w.System(g)[:16]
		if h, ok := firsts[k]; ok {
			t.Fatalf("groups %d and %d start alike: %q", h, g, k)
		}
		firsts[k] = g
	}
	if w.User(17576, 1) == w.User(0, 1) || strings.HasPrefix(w.User(17576, 1), w.User(0, 1)[:12]) {
		t.Error("sessions past one word's worth of ids must still start apart")
	}
}

func TestValidateNamesTheField(t *testing.T) {
	w := DefaultWorkload()
	w.MultiTurn = 2
	if err := w.Validate(); err == nil || !strings.Contains(err.Error(), "multi-turn") {
		t.Fatalf("Validate = %v", err)
	}
}

func ms(n int) time.Duration { return time.Duration(n) * time.Millisecond }

func TestSummarize(t *testing.T) {
	steps := []Step{{Rate: 10, Duration: time.Second}, {Rate: 20, Duration: time.Second}}
	samples := []Sample{
		{Sent: ms(100), Finished: ms(600), TTFT: ms(10), PromptTokens: 100, UncachedTokens: 10},
		{Sent: ms(200), Finished: ms(1500), TTFT: ms(30), PromptTokens: 100, UncachedTokens: 90},
		{Sent: ms(300), Finished: ms(400), Err: "status 503"},
		{Sent: ms(1200), Finished: ms(1900), TTFT: ms(50), PromptTokens: 200, UncachedTokens: 0},
		{Sent: ms(2500), Finished: ms(2600), TTFT: ms(70), PromptTokens: 200, UncachedTokens: 200}, // after the ramp: last step
	}
	got := Summarize(steps, samples)
	if got[0].Sent != 3 || got[0].Errors != 1 || got[0].ErrorKinds["status 503"] != 1 {
		t.Fatalf("step 0 counts: %+v", got[0])
	}
	if got[0].HitRate != 0.5 || got[0].TTFTP50 != 10 || got[0].TTFTP99 != 30 {
		t.Errorf("step 0: hit %.2f p50 %v p99 %v; want 0.50, 10, 30", got[0].HitRate, got[0].TTFTP50, got[0].TTFTP99)
	}
	if got[1].Sent != 2 || got[1].HitRate != 0.5 || got[1].TTFTP50 != 50 || got[1].TTFTP99 != 70 {
		t.Errorf("step 1: %+v", got[1])
	}
	// Completions by finish time inside the ramp: one in step 0, two in step 1, the late one in none.
	if got[0].Throughput != 1 || got[1].Throughput != 2 {
		t.Errorf("throughput %.1f, %.1f; want 1, 2", got[0].Throughput, got[1].Throughput)
	}
	hit, p50, p99, errs := Total(samples)
	if errs != 1 || math.Abs(hit-(1-300.0/600)) > 1e-9 || p50 != ms(30) || p99 != ms(70) {
		t.Errorf("Total = %.3f %v %v %d", hit, p50, p99, errs)
	}
	if rps, at := Sustained([]StepStats{{Sent: 5, Throughput: 5, TTFTP99: 100}, {Sent: 9, Throughput: 9, TTFTP99: 2500}}, 2*time.Second); rps != 5 || at != 0 {
		t.Errorf("Sustained = %v at %d; want 5 at step 0", rps, at)
	}
}

func TestPercentileNearestRank(t *testing.T) {
	ds := []time.Duration{5, 1, 4, 2, 3}
	for q, want := range map[float64]time.Duration{0.5: 3, 0.99: 5, 0.2: 1, 0: 1} {
		if got := Percentile(ds, q); got != want {
			t.Errorf("Percentile(%v) = %v, want %v", q, got, want)
		}
	}
	if Percentile(nil, 0.5) != 0 {
		t.Error("no samples must give 0")
	}
}

func TestScrapedAdd(t *testing.T) {
	s := Scraped{BackendRequests: map[string]int64{}, Picks: map[string]int64{}}
	for _, line := range []string{
		`drover_requests_total{backend="fake2",model="tiny",route="/api/chat",status="200"} 41`,
		`drover_requests_total{backend="fake2",model="tiny",route="/api/chat",status="503"} 1`,
		`drover_requests_total{backend="fake2",model="tiny",route="/api/tags",status="200"} 3`,
		`drover_request_duration_seconds_count{backend="fake2",route="/api/chat"} 41`,
		`# TYPE drover_requests_total counter`,
		`drover_affinity_picks_total{outcome="hit"} 7`,
		`drover_affinity_share_messages_total{direction="sent"} 5`,
		`drover_affinity_share_messages_total{direction="received"} 9`,
		`drover_affinity_share_bytes_total{direction="sent"} 1.5e+03`,
	} {
		s.add(line)
	}
	if s.BackendRequests["fake2"] != 42 || len(s.BackendRequests) != 1 || s.Picks["hit"] != 7 || s.ShareMessages != 5 || s.ShareBytes != 1500 {
		t.Errorf("scraped %+v", s)
	}
}

func TestReplicaConfig(t *testing.T) {
	cfg := ReplicaConfig(Setup{Strategy: "prefix", Replicas: 3}, 4, "r2", 9000, []string{"http://a", "http://b"}, "nats://n", "/d")
	for _, want := range []string{"replica: r2", "max_concurrency: 4", "strategy: prefix", "share: false", "url: nats://n", "url: http://b"} {
		if !strings.Contains(cfg, want) {
			t.Errorf("config lacks %q:\n%s", want, cfg)
		}
	}
	old := ReplicaConfig(Setup{Strategy: "least_loaded", Replicas: 1, NoKeys: true}, 4, "r1", 9000, []string{"http://a"}, "", "/d")
	if strings.Contains(old, "strategy") || strings.Contains(old, "affinity") || strings.Contains(old, "nats") {
		t.Errorf("a build before issue 15 gets no new keys and one replica no NATS:\n%s", old)
	}
}

func TestReportTargetsAndSVG(t *testing.T) {
	step := func(rate, hit float64, p50, p99 Millis, tput float64) StepStats {
		return StepStats{Offered: rate, Sent: 10, HitRate: hit, TTFTP50: p50, TTFTP99: p99, Throughput: tput}
	}
	d := Document{Settings: map[string]string{"backends": "4"}, Results: []Result{
		{Setup: Setup{Name: "least_loaded x1", Strategy: "least_loaded", Replicas: 1, Share: true}, HitRate: 0.2, Sustained: 10,
			Steps: []StepStats{step(10, 0.2, 400, 900, 10), step(20, 0.2, 900, 1900, 17)}}, // 20: saturated (17 < 0.9 × 20)
		{Setup: Setup{Name: "prefix x1", Strategy: "prefix", Replicas: 1, Share: true}, HitRate: 0.7, Sustained: 20,
			Steps: []StepStats{step(10, 0.7, 20, 800, 10), step(20, 0.7, 40, 1500, 20)}},
		{Setup: Setup{Name: "prefix x3", Strategy: "prefix", Replicas: 3, Share: true}, HitRate: 0.66},
	}}
	d.CheckTargets()
	met := map[string]bool{}
	for _, tg := range d.Targets {
		met[tg.Name] = tg.Met
	}
	if !met["p50 TTFT, least_loaded / prefix"] || !met["token hit rate, prefix / least_loaded"] ||
		!met["p99 TTFT, prefix / least_loaded"] || !met["throughput at TTFT p99 < 2 s, prefix / least_loaded"] ||
		!met["token hit rate, 3 replicas sharing / 1 replica"] {
		t.Errorf("targets: %+v", d.Targets)
	}
	var md bytes.Buffer
	d.WriteMarkdown(&md)
	for _, want := range []string{"| prefix x1 | 70.0 % |", "median over steps (req/s: ratio) 10: 20.00, 20: 22.50"} {
		if !strings.Contains(md.String(), want) {
			t.Errorf("markdown lacks %q:\n%s", want, md.String())
		}
	}
	var svg bytes.Buffer
	if err := d.WriteSVG(&svg); err != nil {
		t.Fatal(err)
	}
	dec := xml.NewDecoder(&svg)
	lines := 0
	for {
		tok, err := dec.Token()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("SVG is not well-formed XML: %v", err)
		}
		if se, ok := tok.(xml.StartElement); ok && se.Name.Local == "polyline" {
			lines++
		}
	}
	if lines != 3*len(d.Results) {
		t.Errorf("%d lines, want one per setup in each of 3 panels", lines)
	}
}

// A sweep writes one line per run and replica count, with the ratios the
// targets use.
func TestWriteSweep(t *testing.T) {
	step := func(hit float64, p50, p99 Millis) StepStats {
		return StepStats{Offered: 10, Sent: 10, HitRate: hit, TTFTP50: p50, TTFTP99: p99, Throughput: 10}
	}
	doc := func(groups string, base, pre float64) Document {
		return Document{LoadAvg: 1.5, Settings: map[string]string{"groups": groups}, Results: []Result{
			{Setup: Setup{Strategy: "least_loaded", Replicas: 1, Share: true}, HitRate: base, Sustained: 10, Steps: []StepStats{step(base, 400, 800)}},
			{Setup: Setup{Strategy: "prefix", Replicas: 1, Share: true}, HitRate: pre, Sustained: 11, Steps: []StepStats{step(pre, 40, 600)}},
		}}
	}
	var out bytes.Buffer
	WriteSweep(&out, "groups", []Document{doc("8", 0.5, 0.9), doc("128", 0.1, 0.2)})
	for _, want := range []string{"| 8 | 1 | 50.0 % → 90.0 % | 1.80 | 10.00 | 0.75 | 10.0 → 11.0 | 1.5 |", "| 128 | 1 | 10.0 % → 20.0 % | 2.00 |"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("sweep lacks %q:\n%s", want, out.String())
		}
	}
}

// TestDriveReadsTheCacheBack runs the measurement chain in-process against
// two prompt-caching fake backends, each group pinned to one: the hit rate
// read back from the replies' prompt_eval_duration must equal what the
// backends themselves counted as cached.
func TestDriveReadsTheCacheBack(t *testing.T) {
	const cost = 10 * time.Microsecond
	var backends []*ollamatest.Server
	for range 2 {
		s := ollamatest.New(ollamatest.Config{Parallel: 2, PromptTokenCost: cost, Chunks: 3})
		if err := s.Start(); err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		backends = append(backends, s)
	}
	tr := &http.Transport{}
	defer tr.CloseIdleConnections()
	w := WorkloadSpec{Groups: 4, SystemWords: 200, Zipf: 1, UserWords: 5, MultiTurn: 0.5, Turns: 3, ThinkTime: time.Millisecond, ReplyTokens: 3}
	spec := RunSpec{Workload: w, Steps: []Step{{Rate: 200, Duration: 300 * time.Millisecond}}, Seed: 3,
		DrainWait: 20 * time.Second, Client: Client{HTTP: &http.Client{Transport: tr}, TokenCost: cost}}
	sessions := w.Schedule(spec.Steps, spec.Seed)
	samples := Drive(t.Context(), spec, spec.Steps, func(session, _ int) string {
		return backends[sessions[session].Group%2].URL()
	})
	want := 0
	for _, s := range sessions {
		want += s.Turns
	}
	var prompt, cached int64
	for _, s := range samples {
		if s.Err != "" {
			t.Fatalf("request failed: %s", s.Err)
		}
		prompt += s.PromptTokens
		cached += s.PromptTokens - s.UncachedTokens
	}
	// A backend counts a reply just after flushing its last chunk, so the
	// client can be done first: wait until every reply is counted (Completed
	// is the last counter a reply adds to), then read the sums.
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		completed := int64(0)
		for _, b := range backends {
			completed += b.Counters().Completed
		}
		if completed >= int64(len(samples)) {
			break
		}
	}
	var backendPrompt, backendCached int64
	for _, b := range backends {
		backendPrompt += b.Counters().PromptEvalCount
		backendCached += b.CachedPromptTokens()
	}
	if len(samples) != want || prompt != backendPrompt || cached != backendCached {
		t.Fatalf("%d samples of %d; read back %d cached of %d prompt tokens, the backends counted %d of %d",
			len(samples), want, cached, prompt, backendCached, backendPrompt)
	}
	if cached == 0 {
		t.Fatal("nothing was cached: the test proves nothing")
	}
}
