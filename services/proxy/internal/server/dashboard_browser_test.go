package server

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/droverhq/drover/pkg/apikey"
	"github.com/droverhq/drover/pkg/chstore"
	"github.com/droverhq/drover/pkg/config"
	"github.com/droverhq/drover/pkg/usage"
	"github.com/droverhq/drover/testkit/chtest"
	"github.com/droverhq/drover/testkit/ollamatest"
)

const chromium = "/usr/bin/chromium"

// artifactDir is $DROVER_ARTIFACTS, or artifacts/ at the repository root.
func artifactDir(t *testing.T) string {
	t.Helper()
	dir := os.Getenv("DROVER_ARTIFACTS")
	if dir == "" {
		wd, _ := os.Getwd()
		root := wd
		for d := wd; ; d = filepath.Dir(d) {
			if _, err := os.Stat(filepath.Join(d, "go.work")); err == nil {
				root = d
				break
			}
			if filepath.Dir(d) == d {
				break
			}
		}
		dir = filepath.Join(root, "artifacts")
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

// seedClickHouse starts ClickHouse when its server is installed and fills
// the last hour with usage from team-a and team-b, so the chart has
// something to draw; team-b alone used the model "teamb-only", so a page
// showing it shows team-b's usage. Without ClickHouse the dashboard says
// analytics are not configured, which is tested too.
func seedClickHouse(t *testing.T) *chstore.Store {
	t.Helper()
	if _, err := exec.LookPath("clickhouse-server"); err != nil {
		if _, err := os.Stat("/usr/sbin/clickhouse-server"); err != nil {
			t.Log("clickhouse-server not installed: the chart will say analytics are not configured")
			return nil
		}
	}
	srv := chtest.Start(t)
	store, err := chstore.Open(chstore.Options{Addr: srv.Addr(), Database: "drover_dashboard"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })
	ctx := context.Background()
	if _, err := store.Migrate(ctx); err != nil {
		t.Fatal(err)
	}
	var rows []chstore.EventRow
	now := time.Now().UTC()
	for i := range 700 {
		ago := time.Duration(i%600) * 6 * time.Second
		key, model := []string{"team-a", "team-b"}[i%5%2], []string{"tiny", "tiny", "tiny2"}[i%3]
		if i >= 600 {
			key, model = "team-b", "teamb-only"
		}
		ev := usage.Event{Schema: usage.SchemaVersion, ID: usage.NewID(), Time: now.Add(-ago),
			Endpoint: []string{"a", "b"}[i%2], Model: model, APIKey: key,
			Route: []string{"/api/chat", "/v1/chat/completions", "/v1/messages", "/v1/responses"}[i%4], Status: 200,
			InputTokens: usage.Int64(int64(20 + i%13)), OutputTokens: usage.Int64(int64(200 + (i*37)%300))}
		rows = append(rows, chstore.EventRow{Event: ev, Partition: 0, Seq: uint64(i + 1)})
	}
	if err := store.InsertEvents(ctx, rows); err != nil {
		t.Fatal(err)
	}
	return store
}

// browser drives one headless Chromium tab against a test server.
type browser struct {
	t   *testing.T
	ctx context.Context
	dir string // where screenshots go
}

func newBrowser(t *testing.T) *browser {
	t.Helper()
	if _, err := os.Stat(chromium); err != nil {
		if os.Getenv("DROVER_ALLOW_SKIP") == "1" {
			t.Skipf("%s not found; skipping the browser test because DROVER_ALLOW_SKIP=1 (apt-get install chromium)", chromium)
		}
		t.Fatalf("%s not found: apt-get install chromium (or set DROVER_ALLOW_SKIP=1 to skip)", chromium)
	}
	alloc, cancelAlloc := chromedp.NewExecAllocator(context.Background(),
		chromedp.ExecPath(chromium),
		chromedp.Flag("headless", true), chromedp.NoSandbox, chromedp.DisableGPU,
		chromedp.Flag("disable-quic", true), chromedp.NoFirstRun,
		chromedp.Flag("disable-background-networking", true), chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true), chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(1400, 1100),
	)
	t.Cleanup(cancelAlloc)
	ctx, cancelCtx := chromedp.NewContext(alloc)
	t.Cleanup(cancelCtx)
	return &browser{t: t, ctx: ctx, dir: artifactDir(t)}
}

// step runs a; on failure it keeps a screenshot and the page's text.
func (b *browser) step(what string, a chromedp.Action[chromedp.Void]) {
	b.t.Helper()
	sctx, cancel := context.WithTimeout(b.ctx, 20*time.Second)
	defer cancel()
	if err := chromedp.Do(sctx, a); err != nil {
		dctx, dcancel := context.WithTimeout(b.ctx, 10*time.Second)
		defer dcancel()
		if png, err := chromedp.Run(dctx, chromedp.FullScreenshot(100)); err == nil {
			os.WriteFile(filepath.Join(b.dir, "dashboard-failure.png"), png, 0o644) //nolint:errcheck
		}
		page, _ := chromedp.Run(dctx, chromedp.Evaluate[string](`document.body.innerText`))
		b.t.Fatalf("%s: %v\npage text:\n%s", what, err, page)
	}
}

func (b *browser) text(sel string) string {
	b.t.Helper()
	sctx, cancel := context.WithTimeout(b.ctx, 10*time.Second)
	defer cancel()
	s, err := chromedp.Run(sctx, chromedp.Text(chromedp.CSS(sel)))
	if err != nil {
		b.t.Fatalf("reading %s: %v", sel, err)
	}
	return strings.TrimSpace(s)
}

// eval returns the value of a JavaScript expression.
func eval[T any](b *browser, expr string) T {
	b.t.Helper()
	sctx, cancel := context.WithTimeout(b.ctx, 10*time.Second)
	defer cancel()
	v, err := chromedp.Run(sctx, chromedp.Evaluate[T](expr))
	if err != nil {
		b.t.Fatalf("evaluating %s: %v", expr, err)
	}
	return v
}

// wait polls expr in the page until it is true.
func (b *browser) wait(what, expr string) {
	b.t.Helper()
	b.step(what, chromedp.Poll[chromedp.Void](expr, chromedp.WithPollingInterval(50*time.Millisecond), chromedp.WithPollingTimeout(15*time.Second)))
}

func (b *browser) shot(name string) {
	b.t.Helper()
	sctx, cancel := context.WithTimeout(b.ctx, 20*time.Second)
	defer cancel()
	png, err := chromedp.Run(sctx, chromedp.FullScreenshot(100))
	if err != nil {
		b.t.Fatalf("screenshot: %v", err)
	}
	path := filepath.Join(b.dir, name)
	if err := os.WriteFile(path, png, 0o644); err != nil {
		b.t.Fatal(err)
	}
	b.t.Logf("screenshot: %s", path)
}

// enterKey answers the key prompt.
func (b *browser) enterKey(key string) {
	b.t.Helper()
	b.wait("the key prompt", `document.querySelector('#key-dialog').open`)
	b.step("entering a key", chromedp.Steps(
		chromedp.SendKeys(chromedp.CSS("#key-input"), key),
		chromedp.Click(chromedp.CSS("#key-save")),
	))
}

// TestDashboardInBrowser drives the dashboard in headless Chromium with
// an admin key and two client keys: a wrong key is asked for again; the
// admin sees live in-flight numbers that follow the load, backends,
// models, every key's usage, the tokens chart and a pull with progress;
// after signing out, a client key handed over as /?api_key= (and taken
// out of the URL) sees only its own usage while the other key's traffic
// goes on, and the admin-only panels say so. Screenshots are kept as
// test artefacts.
func TestDashboardInBrowser(t *testing.T) {
	b := newBrowser(t)
	store := seedClickHouse(t)
	e := newEnvOpts(t, 2, func(i int, c *ollamatest.Config) {
		c.Chunks, c.ChunkDelay = 30, 20*time.Millisecond
		c.Loaded = []string{"tiny"}
	}, func(c *config.Config) {
		// Limits far above what the test's load spends: the Limits panel
		// shows them, nothing is refused.
		c.Auth.Keys = []config.APIKey{{ID: "root", Key: "secret-root", Role: "admin"},
			{ID: "team-a", Key: "secret-a", Limits: apikey.Limits{RequestsPerMinute: 100_000, TokensPerDay: 50_000_000},
				ModelLimits: map[string]apikey.Limits{"tiny": {Concurrent: 64}}},
			{ID: "team-b", Key: "secret-b", Limits: apikey.Limits{TokensPerMonth: 900_000_000}}}
		c.Routing.MaxConcurrency = 6
	}, Options{ClickHouse: store})

	// The first Do starts the browser; it lives as long as the context
	// it is given, so it is given b.ctx, not a step's.
	if err := chromedp.Do(b.ctx, chromedp.Navigate(e.url+"/")); err != nil {
		t.Fatalf("loading the dashboard: %v", err)
	}

	// Keys are configured: the page asks for one, and again for a wrong one.
	b.enterKey("not-a-key")
	b.wait("the prompt again for a wrong key", `document.querySelector('#key-dialog').open && document.querySelector('#key-reason').textContent.includes('refused')`)
	if got := eval[string](b, `sessionStorage.getItem('drover.apiKey') || ''`); got != "" {
		t.Fatalf("a refused key stayed stored: %q", got)
	}
	b.step("entering the admin key", chromedp.Steps(
		chromedp.SendKeys(chromedp.CSS("#key-input"), "secret-root"),
		chromedp.Click(chromedp.CSS("#key-save")),
	))
	b.wait("the live stream", `document.querySelector('#conn-status').textContent === 'live'`)
	b.wait("who the page acts as", `document.querySelector('#whoami').textContent.startsWith('admin key root')`)
	b.wait("the backends", `document.querySelectorAll('#backends tbody tr[data-backend]').length === 2`)
	b.wait("the models", `document.querySelector('#models tbody tr[data-model="tiny:latest"] .chip.loaded') !== null`)
	if got := b.text("#fleet-inflight"); got != "0" {
		t.Fatalf("in flight before any load: %q", got)
	}
	if got := eval[string](b, `localStorage.getItem('drover.apiKey') || '' + location.href`); strings.Contains(got, "secret") {
		t.Fatalf("the key left behind in localStorage or the URL: %q", got)
	}

	// Load in two steps, from both client keys; the numbers must follow.
	load := newLoad(e.url)
	load.add(2)
	b.wait("in-flight numbers to appear", `+document.querySelector('#fleet-inflight').textContent > 0 && document.querySelectorAll('#inflight tbody tr[data-backend]').length > 0`)
	seen := map[string]bool{}
	// sample reads the page's number every 40ms for d: it collects what
	// the page showed over a stretch of load (not waiting for anything).
	sample := func(d time.Duration) {
		for end := time.Now().Add(d); time.Now().Before(end); time.Sleep(40 * time.Millisecond) {
			seen[b.text("#fleet-inflight")] = true
		}
	}
	sample(time.Second)
	load.add(8)
	b.wait("in flight to rise with the load", `+document.querySelector('#fleet-inflight').textContent >= 6`)
	tokensBefore := b.text("#tokens-total")
	sample(1500 * time.Millisecond)
	b.wait("token totals to grow", fmt.Sprintf(`document.querySelector('#tokens-total').textContent !== %q`, tokensBefore))
	delete(seen, "0")
	if len(seen) < 2 {
		t.Fatalf("in-flight showed only %v while the load went from 2 to 10 clients; want it to follow", seen)
	}
	b.wait("every key's usage", `document.querySelector('#keys tbody tr[data-key="team-a"]') && document.querySelector('#keys tbody tr[data-key="team-b"]')`)
	// Every key's limits, what is left and what each spent today.
	b.wait("every key's limits", `['root', 'team-a', 'team-b'].every((k) => document.querySelector('#limits tbody tr[data-key="' + k + '"]:not([data-model])')) &&
		document.querySelector('#limits tbody tr[data-key="team-a"][data-model="tiny"] td[data-field="concurrent"]').textContent.includes('left') &&
		document.querySelector('#limits tbody tr[data-key="team-b"] td[data-field="tokens_per_month"] .sub').textContent.endsWith(' left') &&
		document.querySelector('#limits tbody tr[data-key="root"] td[data-field="tokens_per_day"] .sub').textContent === 'no limit'`)
	b.wait("team-a's spend today in its limits", `(() => {
		const td = document.querySelector('#limits tbody tr[data-key="team-a"]:not([data-model]) td[data-field="tokens_per_day"]');
		return td && /^[1-9][0-9.,kM]* \/ 50M$/.test(td.querySelector('.n').textContent) && td.querySelector('.sub').textContent.endsWith(' left');
	})()`)
	if store != nil {
		b.wait("the tokens chart", `document.querySelectorAll('#chart svg rect').length > 10`)
		b.wait("team-b's model in the chart", `document.querySelector('#chart-legend').textContent.includes('teamb-only')`)
		b.wait("usage per API", `['ollama', 'openai', 'anthropic', 'responses'].every((a) => document.querySelector('#apis tbody tr[data-api="' + a + '"]'))`)
	} else {
		b.wait("the chart's explanation", `document.querySelector('#chart').textContent.includes('ClickHouse')`)
	}
	b.shot("dashboard-under-load.png")
	b.step("dark mode", chromedp.Click(chromedp.CSS("#theme-button")))
	b.shot("dashboard-dark.png")
	load.stop()
	if load.failed() > 0 {
		t.Fatalf("%d load requests failed", load.failed())
	}
	b.wait("in flight to return to zero", `document.querySelector('#fleet-inflight').textContent === '0' && document.querySelector('#inflight tbody tr.empty') !== null`)

	// Pull with progress, through the API every backend sees.
	b.step("pulling", chromedp.Steps(
		chromedp.SendKeys(chromedp.CSS("#pull-name"), "fresh-model:1b"),
		chromedp.Click(chromedp.CSS("#pull-form button")),
	))
	b.wait("the pull to finish", `document.querySelector('#pull-text').textContent.includes('done')`)
	b.wait("the pulled model to be listed", `document.querySelector('#models tbody tr[data-model="fresh-model:1b"]') !== null`)
	for _, f := range e.fakes {
		if !slices.Contains(f.Models(), "fresh-model:1b") {
			t.Fatal("a backend did not get the pulled model")
		}
	}

	// Show, copy and delete from the model's row.
	row := `#models tbody tr[data-model="fresh-model:1b"] `
	b.step("show", chromedp.Click(chromedp.CSS(row+`button:nth-of-type(1)`)))
	b.wait("the model's details", `document.querySelector('#show-dialog').open && document.querySelector('#show-body').textContent.includes('"details"')`)
	b.step("closing show", chromedp.Click(chromedp.CSS(`#show-dialog button`)))
	b.step("copy", chromedp.Click(chromedp.CSS(row+`button:nth-of-type(2)`)))
	b.wait("the copy dialog", `document.querySelector('#copy-dialog').open && document.querySelector('#copy-dest').value === 'fresh-model-copy:1b'`)
	b.step("copying", chromedp.Click(chromedp.CSS(`#copy-dialog button[value="copy"]`)))
	b.wait("the copy to be listed", `document.querySelector('#models tbody tr[data-model="fresh-model-copy:1b"]') !== null`)
	b.step("confirming deletes", chromedp.Evaluate[chromedp.Void](`window.confirm = () => true`))
	b.step("delete", chromedp.Click(chromedp.CSS(`#models tbody tr[data-model="fresh-model-copy:1b"] button.danger`)))
	b.wait("the deleted model to go", `document.querySelector('#models tbody tr[data-model="fresh-model-copy:1b"]') === null && document.querySelector('#models tbody tr[data-model="fresh-model:1b"]') !== null`)
	for _, f := range e.fakes {
		if slices.Contains(f.Models(), "fresh-model-copy:1b") || !slices.Contains(f.Models(), "fresh-model:1b") {
			t.Fatalf("after copy and delete a backend has %v", f.Models())
		}
	}

	// Signing out forgets the key and everything it was shown.
	b.step("signing out", chromedp.Click(chromedp.CSS("#sign-out")))
	b.wait("the prompt after signing out", `document.querySelector('#key-dialog').open && !sessionStorage.getItem('drover.apiKey') && !document.querySelector('#keys tbody tr[data-key]')`)

	dashboardAsClient(t, b, e, store != nil)
}

// dashboardAsClient opens the dashboard with team-a's key handed over in
// the URL while team-b keeps working: the page shows team-a's usage and
// nothing of team-b's, and the admin-only panels say so.
func dashboardAsClient(t *testing.T, b *browser, e *env, analytics bool) {
	t.Helper()
	load := newLoad(e.url)
	defer load.stop()
	load.addAs("secret-b", "tiny2", 3)
	b.step("opening the dashboard with a key in the URL", chromedp.Navigate(e.url+"/?api_key=secret-a&range=1h"))
	b.wait("the key taken out of the URL", `location.search === '?range=1h' && sessionStorage.getItem('drover.apiKey') === 'secret-a'`)
	if got := eval[string](b, `localStorage.getItem('drover.apiKey') || ''`); got != "" {
		t.Fatalf("the key went to localStorage: %q", got)
	}
	b.wait("the live stream", `document.querySelector('#conn-status').textContent === 'live'`)
	b.wait("who the page acts as", `document.querySelector('#whoami').textContent.startsWith('client key')`)
	if analytics {
		b.wait("the key's id", `document.querySelector('#whoami').textContent === 'client key team-a · sees only its own usage'`)
	}
	// team-a's own traffic, for its numbers to show.
	load.addAs("secret-a", "tiny", 1)
	b.wait("its own usage", `document.querySelector('#keys tbody tr[data-key="team-a"]') !== null`)
	b.wait("the admin-only panels", `document.querySelector('#backends tbody').textContent.includes('Admin only') && document.querySelector('#inflight tbody').textContent.includes('Admin only') && document.querySelector('#pull-form').offsetParent === null && document.querySelectorAll('#models tbody button.danger').length > 0 && [...document.querySelectorAll('#models tbody button.danger')].every((x) => x.offsetParent === null)`)
	if analytics {
		b.wait("the tokens chart", `document.querySelectorAll('#chart svg rect').length > 5 && document.querySelector('#chart-legend').textContent.includes('tiny')`)
		b.wait("usage per API", `document.querySelectorAll('#apis tbody tr[data-api]').length > 0`)
	}
	b.wait("its own live tokens", `+document.querySelector('#tokens-total').title.replaceAll(/[^0-9]/g, '') > 0`)
	b.shot("dashboard-client.png")
	// team-b's traffic goes on all along; none of it is on the page: not
	// its key id, not the models only it used (teamb-only in ClickHouse,
	// tiny2 in this replica's live totals), not its tokens.
	hidden := `(() => {
		const html = document.documentElement.outerHTML;
		return !html.includes('team-b') && !html.includes('teamb-only') && !html.includes('secret-') &&
			!document.querySelector('#keys tbody tr[data-key]:not([data-key="team-a"])') &&
			// Cell by cell: the tbody's text runs cells together ("tiny" then
			// 20 requests reads "tiny20").
			![...document.querySelectorAll('#totals tbody td')].some((td) => td.textContent === 'tiny2') &&
			!document.querySelector('#inflight tbody tr[data-backend]');
	})()`
	for range 3 {
		if !eval[bool](b, hidden) {
			page := eval[string](b, `document.body.innerText`)
			t.Fatalf("the client page shows another key's usage (or a secret):\n%s", page)
		}
		seq := eval[float64](b, `state.usage ? state.usage.seq : 0`)
		b.wait("another live snapshot", fmt.Sprintf(`state.usage && state.usage.seq > %v`, seq))
	}
	// Without NATS the figures are this replica's, and the panel says so.
	b.wait("its own limits, and no other key's", `document.querySelector('#limits-title').textContent === 'Limits of this key' &&
		document.querySelector('#limits-note').textContent.includes("not the whole fleet's: nats.url is not set") &&
		document.querySelector('#limits tbody tr[data-key="team-a"] td[data-field="tokens_per_day"] .sub').textContent.endsWith(' left') &&
		[...document.querySelectorAll('#limits tbody tr[data-key]')].every((tr) => tr.dataset.key === 'team-a')`)
	load.stop()
	if load.failed() > 0 {
		t.Fatalf("%d load requests failed", load.failed())
	}
	// Its token total is its own: what /api/usage answers team-a, less
	// than what it answers the admin.
	own, all := liveTokens(t, e.url, "secret-a"), liveTokens(t, e.url, "secret-root")
	if own <= 0 || own >= all {
		t.Fatalf("/api/usage tokens: team-a %d, admin %d; want team-a's share only", own, all)
	}
	b.wait("the page's total to be team-a's", fmt.Sprintf(`document.querySelector('#tokens-total').title.replaceAll(/[^0-9]/g, '') === '%d'`, own))
}

// liveTokens sums token_usage_counts from /api/usage as key sees it.
func liveTokens(t *testing.T, base, key string) int64 {
	t.Helper()
	resp, body := get(t, base+"/api/usage", map[string]string{"Authorization": "Bearer " + key})
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("/api/usage as %s: %d %s", key, resp.StatusCode, body)
	}
	var snap struct {
		Tokens map[string]map[string]int64 `json:"token_usage_counts"`
	}
	if err := json.Unmarshal([]byte(body), &snap); err != nil {
		t.Fatal(err)
	}
	var n int64
	for _, models := range snap.Tokens {
		for _, v := range models {
			n += v
		}
	}
	return n
}

// load keeps streaming chats going from two client keys.
type load struct {
	url    string
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
	mu     sync.Mutex // guards errs
	errs   int
	n      int // workers started
	turn   int // add's alternation between the two keys
}

func newLoad(url string) *load {
	ctx, cancel := context.WithCancel(context.Background())
	return &load{url: url, ctx: ctx, cancel: cancel}
}

// add starts workers alternating between team-a on tiny and team-b on
// tiny2.
func (l *load) add(workers int) {
	for range workers {
		l.turn++
		if l.turn%2 == 0 {
			l.addAs("secret-a", "tiny", 1)
		} else {
			l.addAs("secret-b", "tiny2", 1)
		}
	}
}

// addAs starts workers chatting with model as key.
func (l *load) addAs(key, model string, workers int) {
	for range workers {
		l.n++
		i := l.n
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			for l.ctx.Err() == nil {
				body := `{"model":"` + model + `","messages":[{"role":"user","content":"hello ` + strconv.Itoa(i) + `"}]}`
				req, _ := http.NewRequestWithContext(l.ctx, http.MethodPost, l.url+"/api/chat", strings.NewReader(body))
				req.Header.Set("Authorization", "Bearer "+key)
				resp, err := http.DefaultClient.Do(req)
				if err == nil {
					_, err = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					if resp.StatusCode != http.StatusOK {
						err = fmt.Errorf("status %d", resp.StatusCode)
					}
				}
				if err != nil && l.ctx.Err() == nil {
					l.mu.Lock()
					l.errs++
					l.mu.Unlock()
				}
			}
		}()
	}
}

func (l *load) stop() { l.cancel(); l.wg.Wait() }

func (l *load) failed() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.errs
}
