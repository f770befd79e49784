package server

import (
	"context"
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
// the last hour with usage, so the chart has something to draw; without it
// the dashboard says analytics are not configured, which is tested too.
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
	for i := range 600 {
		ago := time.Duration(i) * 6 * time.Second
		ev := usage.Event{Schema: usage.SchemaVersion, ID: usage.NewID(), Time: now.Add(-ago),
			Endpoint: []string{"a", "b"}[i%2], Model: []string{"tiny", "tiny", "tiny2"}[i%3], APIKey: []string{"team-a", "team-b"}[i%5%2],
			Route: []string{"/api/chat", "/v1/chat/completions", "/v1/messages", "/v1/responses"}[i%4], Status: 200,
			InputTokens: usage.Int64(int64(20 + i%13)), OutputTokens: usage.Int64(int64(200 + (i*37)%300))}
		rows = append(rows, chstore.EventRow{Event: ev, Partition: 0, Seq: uint64(i + 1)})
	}
	if err := store.InsertEvents(ctx, rows); err != nil {
		t.Fatal(err)
	}
	return store
}

// TestDashboardInBrowser drives the dashboard in headless Chromium: the key
// prompt, live in-flight numbers that appear and change under load and go
// back to zero, backends, models, per-key usage, the tokens chart, a pull
// with progress; and saves screenshots as test artefacts.
func TestDashboardInBrowser(t *testing.T) {
	if _, err := os.Stat(chromium); err != nil {
		if os.Getenv("DROVER_ALLOW_SKIP") == "1" {
			t.Skipf("%s not found; skipping the browser test because DROVER_ALLOW_SKIP=1 (apt-get install chromium)", chromium)
		}
		t.Fatalf("%s not found: apt-get install chromium (or set DROVER_ALLOW_SKIP=1 to skip)", chromium)
	}
	store := seedClickHouse(t)
	e := newEnvOpts(t, 2, func(i int, c *ollamatest.Config) {
		c.Chunks, c.ChunkDelay = 30, 20*time.Millisecond
		c.Loaded = []string{"tiny"}
	}, func(c *config.Config) {
		c.Auth.Keys = []config.APIKey{{ID: "team-a", Key: "secret-a"}, {ID: "team-b", Key: "secret-b"}}
		c.Routing.MaxConcurrency = 6
	}, Options{ClickHouse: store})

	alloc, cancelAlloc := chromedp.NewExecAllocator(context.Background(),
		chromedp.ExecPath(chromium),
		chromedp.Flag("headless", true), chromedp.NoSandbox, chromedp.DisableGPU,
		chromedp.Flag("disable-quic", true), chromedp.NoFirstRun,
		chromedp.Flag("disable-background-networking", true), chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true), chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(1400, 1100),
	)
	defer cancelAlloc()
	ctx, cancelCtx := chromedp.NewContext(alloc)
	defer cancelCtx()
	// The first Run starts the browser; it lives as long as ctx.
	if err := chromedp.Do(ctx, chromedp.Navigate(e.url+"/")); err != nil {
		t.Fatalf("loading the dashboard: %v", err)
	}
	dir := artifactDir(t)
	step := func(what string, a chromedp.Action[chromedp.Void]) {
		t.Helper()
		sctx, cancel := context.WithTimeout(ctx, 20*time.Second)
		defer cancel()
		if err := chromedp.Do(sctx, a); err != nil {
			// Keep what the browser showed, to see why.
			dctx, dcancel := context.WithTimeout(ctx, 10*time.Second)
			defer dcancel()
			if png, err := chromedp.Run(dctx, chromedp.FullScreenshot(100)); err == nil {
				os.WriteFile(filepath.Join(dir, "dashboard-failure.png"), png, 0o644) //nolint:errcheck
			}
			page, _ := chromedp.Run(dctx, chromedp.Evaluate[string](`document.body.innerText`))
			t.Fatalf("%s: %v\npage text:\n%s", what, err, page)
		}
	}
	text := func(sel string) string {
		t.Helper()
		sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		s, err := chromedp.Run(sctx, chromedp.Text(chromedp.CSS(sel)))
		if err != nil {
			t.Fatalf("reading %s: %v", sel, err)
		}
		return strings.TrimSpace(s)
	}
	wait := func(what, expr string) {
		t.Helper()
		step(what, chromedp.Poll[chromedp.Void](expr, chromedp.WithPollingInterval(50*time.Millisecond), chromedp.WithPollingTimeout(15*time.Second)))
	}

	// Keys are configured: the page asks for one and keeps it.
	wait("the key prompt", `document.querySelector('#key-dialog').open`)
	step("entering the key", chromedp.Steps(
		chromedp.SendKeys(chromedp.CSS("#key-input"), "secret-a"),
		chromedp.Click(chromedp.CSS("#key-save")),
	))
	wait("the live stream", `document.querySelector('#conn-status').textContent === 'live'`)
	wait("the backends", `document.querySelectorAll('#backends tbody tr[data-backend]').length === 2`)
	wait("the models", `document.querySelector('#models tbody tr[data-model="tiny:latest"] .chip.loaded') !== null`)
	if got := text("#fleet-inflight"); got != "0" {
		t.Fatalf("in flight before any load: %q", got)
	}

	// Load in two steps, from both keys; the numbers must follow.
	load := newLoad(e.url)
	load.add(2)
	wait("in-flight numbers to appear", `+document.querySelector('#fleet-inflight').textContent > 0 && document.querySelectorAll('#inflight tbody tr[data-backend]').length > 0`)
	seen := map[string]bool{}
	// sample reads the page's number every 40ms for d: it collects what
	// the page showed over a stretch of load (not waiting for anything).
	sample := func(d time.Duration) {
		for end := time.Now().Add(d); time.Now().Before(end); time.Sleep(40 * time.Millisecond) {
			seen[text("#fleet-inflight")] = true
		}
	}
	sample(time.Second)
	load.add(8)
	wait("in flight to rise with the load", `+document.querySelector('#fleet-inflight').textContent >= 6`)
	tokensBefore := text("#tokens-total")
	sample(1500 * time.Millisecond)
	wait("token totals to grow", fmt.Sprintf(`document.querySelector('#tokens-total').textContent !== %q`, tokensBefore))
	delete(seen, "0")
	if len(seen) < 2 {
		t.Fatalf("in-flight showed only %v while the load went from 2 to 10 clients; want it to follow", seen)
	}
	wait("per-key usage", `document.querySelector('#keys tbody tr[data-key="team-a"]') && document.querySelector('#keys tbody tr[data-key="team-b"]')`)
	if store != nil {
		wait("the tokens chart", `document.querySelectorAll('#chart svg rect').length > 10`)
		wait("usage per API", `['ollama', 'openai', 'anthropic', 'responses'].every((a) => document.querySelector('#apis tbody tr[data-api="' + a + '"]'))`)
	} else {
		wait("the chart's explanation", `document.querySelector('#chart').textContent.includes('ClickHouse')`)
	}
	shot := func(name string) {
		t.Helper()
		sctx, cancel := context.WithTimeout(ctx, 20*time.Second)
		defer cancel()
		png, err := chromedp.Run(sctx, chromedp.FullScreenshot(100))
		if err != nil {
			t.Fatalf("screenshot: %v", err)
		}
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, png, 0o644); err != nil {
			t.Fatal(err)
		}
		t.Logf("screenshot: %s", path)
	}
	shot("dashboard-under-load.png")
	step("dark mode", chromedp.Click(chromedp.CSS("#theme-button")))
	shot("dashboard-dark.png")
	load.stop()
	if load.failed() > 0 {
		t.Fatalf("%d load requests failed", load.failed())
	}
	wait("in flight to return to zero", `document.querySelector('#fleet-inflight').textContent === '0' && document.querySelector('#inflight tbody tr.empty') !== null`)

	// Pull with progress, through the API every backend sees.
	step("pulling", chromedp.Steps(
		chromedp.SendKeys(chromedp.CSS("#pull-name"), "fresh-model:1b"),
		chromedp.Click(chromedp.CSS("#pull-form button")),
	))
	wait("the pull to finish", `document.querySelector('#pull-text').textContent.includes('done')`)
	wait("the pulled model to be listed", `document.querySelector('#models tbody tr[data-model="fresh-model:1b"]') !== null`)
	for _, f := range e.fakes {
		if !slices.Contains(f.Models(), "fresh-model:1b") {
			t.Fatal("a backend did not get the pulled model")
		}
	}

	// Show, copy and delete from the model's row.
	row := `#models tbody tr[data-model="fresh-model:1b"] `
	step("show", chromedp.Click(chromedp.CSS(row+`button:nth-of-type(1)`)))
	wait("the model's details", `document.querySelector('#show-dialog').open && document.querySelector('#show-body').textContent.includes('"details"')`)
	step("closing show", chromedp.Click(chromedp.CSS(`#show-dialog button`)))
	step("copy", chromedp.Click(chromedp.CSS(row+`button:nth-of-type(2)`)))
	wait("the copy dialog", `document.querySelector('#copy-dialog').open && document.querySelector('#copy-dest').value === 'fresh-model-copy:1b'`)
	step("copying", chromedp.Click(chromedp.CSS(`#copy-dialog button[value="copy"]`)))
	wait("the copy to be listed", `document.querySelector('#models tbody tr[data-model="fresh-model-copy:1b"]') !== null`)
	step("confirming deletes", chromedp.Evaluate[chromedp.Void](`window.confirm = () => true`))
	step("delete", chromedp.Click(chromedp.CSS(`#models tbody tr[data-model="fresh-model-copy:1b"] button.danger`)))
	wait("the deleted model to go", `document.querySelector('#models tbody tr[data-model="fresh-model-copy:1b"]') === null && document.querySelector('#models tbody tr[data-model="fresh-model:1b"]') !== null`)
	for _, f := range e.fakes {
		if slices.Contains(f.Models(), "fresh-model-copy:1b") || !slices.Contains(f.Models(), "fresh-model:1b") {
			t.Fatalf("after copy and delete a backend has %v", f.Models())
		}
	}
}

// load keeps streaming chats going from two client keys.
type load struct {
	url    string
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
	mu     sync.Mutex // guards errs
	errs   int
	n      int
}

func newLoad(url string) *load {
	ctx, cancel := context.WithCancel(context.Background())
	return &load{url: url, ctx: ctx, cancel: cancel}
}

func (l *load) add(workers int) {
	for range workers {
		l.n++
		i := l.n
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			for l.ctx.Err() == nil {
				body := `{"model":"` + []string{"tiny", "tiny2"}[i%2] + `","messages":[{"role":"user","content":"hello ` + strconv.Itoa(i) + `"}]}`
				req, _ := http.NewRequestWithContext(l.ctx, http.MethodPost, l.url+"/api/chat", strings.NewReader(body))
				req.Header.Set("Authorization", "Bearer "+[]string{"secret-a", "secret-b"}[i%2])
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
