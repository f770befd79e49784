package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/droverhq/drover/testkit/freeport"
	"github.com/droverhq/drover/testkit/ollamatest"
)

// startProxy runs the real drover-proxy binary in front of two fake Ollama
// servers (the first with tiny loaded), with env added to its environment,
// and returns its URL and the fakes.
func startProxy(t *testing.T, env ...string) (string, []*ollamatest.Server) {
	t.Helper()
	dir := t.TempDir()
	build := exec.Command("go", "build", "-o", dir+"/", "github.com/droverhq/drover/services/proxy/cmd/drover-proxy")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building drover-proxy: %v\n%s", err, out)
	}
	var fakes []*ollamatest.Server
	var urls []string
	for i := range 2 {
		cfg := ollamatest.Config{}
		if i == 0 {
			cfg.Loaded = []string{"tiny"}
		}
		f := ollamatest.New(cfg)
		if err := f.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(f.Close)
		fakes = append(fakes, f)
		urls = append(urls, f.URL())
	}
	addr, err := freeport.Addr()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(filepath.Join(dir, "drover-proxy"))
	cmd.Env = append(os.Environ(), "DROVER_LISTEN="+addr, "DROVER_BACKENDS="+strings.Join(urls, ","),
		"DROVER_LOG_LEVEL=warn", "DROVER_REPLICA=ctl-test", "DROVER_USAGE_SPOOL_DIR="+filepath.Join(dir, "spool"))
	cmd.Env = append(cmd.Env, env...)
	var logs bytes.Buffer
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM) //nolint:errcheck
		cmd.Wait()                          //nolint:errcheck
		if t.Failed() {
			t.Logf("drover-proxy log:\n%s", logs.String())
		}
	})
	url := "http://" + addr
	for deadline := time.Now().Add(20 * time.Second); ; {
		if resp, err := http.Get(url + "/"); err == nil {
			resp.Body.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("drover-proxy did not come up")
		}
		time.Sleep(50 * time.Millisecond)
	}
	return url, fakes
}

func TestFleetCommands(t *testing.T) {
	t.Setenv("OLLAMA_HOST", "")
	url, fakes := startProxy(t)
	names := []string{strings.TrimPrefix(fakes[0].URL(), "http://"), strings.TrimPrefix(fakes[1].URL(), "http://")}

	resp, err := http.Post(url+"/api/chat", "application/json", strings.NewReader(`{"model":"tiny","messages":[{"role":"user","content":"hi"}],"stream":false}`))
	if err != nil {
		t.Fatal(err)
	}
	var chat struct {
		PromptEvalCount int64 `json:"prompt_eval_count"`
		EvalCount       int64 `json:"eval_count"`
	}
	json.NewDecoder(resp.Body).Decode(&chat) //nolint:errcheck
	resp.Body.Close()

	t.Run("status table", func(t *testing.T) {
		code, out, errOut := droverctl(t, "status", "--url", url)
		if code != 0 {
			t.Fatalf("exit %d: %s", code, errOut)
		}
		for _, want := range []string{"OK", "ctl-test", names[0], names[1], "tiny:latest", "BACKEND", "MODEL"} {
			if !strings.Contains(out, want) {
				t.Errorf("status lacks %q:\n%s", want, out)
			}
		}
		// The loaded model is on the first backend's row only.
		for _, line := range strings.Split(out, "\n") {
			if strings.HasPrefix(line, names[1]+" ") && strings.Contains(line, "tiny:latest") {
				t.Errorf("tiny shown loaded on %s: %q", names[1], line)
			}
		}
	})

	t.Run("status json", func(t *testing.T) {
		code, out, errOut := droverctl(t, "status", "--url", strings.TrimPrefix(url, "http://"), "--json")
		if code != 0 {
			t.Fatalf("exit %d: %s", code, errOut)
		}
		var doc struct {
			Health healthDoc
			Loaded loadedDoc
			Usage  usageDoc
		}
		if err := json.Unmarshal([]byte(out), &doc); err != nil {
			t.Fatalf("%v\n%s", err, out)
		}
		if doc.Health.Status != "ok" || len(doc.Health.Backends) != 2 || len(doc.Loaded.Models) != 1 || doc.Loaded.Models[0].Endpoint != names[0] {
			t.Errorf("status json %+v", doc)
		}
		var in, outTok, reqs int64
		for _, models := range doc.Usage.Totals {
			for _, c := range models {
				in, outTok, reqs = in+c.InputTokens, outTok+c.OutputTokens, reqs+c.Requests
			}
		}
		if reqs != 1 || in != chat.PromptEvalCount || outTok != chat.EvalCount {
			t.Errorf("usage totals: %d requests, %d/%d tokens; the chat reported %d/%d", reqs, in, outTok, chat.PromptEvalCount, chat.EvalCount)
		}
	})

	t.Run("cache invalidate", func(t *testing.T) {
		code, out, errOut := droverctl(t, "cache", "invalidate", "--url", url)
		if code != 0 || !strings.Contains(out, "every backend") {
			t.Fatalf("exit %d: %q %q", code, out, errOut)
		}
		code, out, errOut = droverctl(t, "cache", "--url", url, "invalidate", "--backend", names[1], "--json")
		var doc struct {
			Invalidated []string
			All         bool
		}
		if code != 0 || json.Unmarshal([]byte(out), &doc) != nil || len(doc.Invalidated) != 1 || doc.Invalidated[0] != names[1] || doc.All {
			t.Fatalf("exit %d: %q %q", code, out, errOut)
		}
		if code, _, _ := droverctl(t, "cache", "--url", url); code != 2 {
			t.Errorf("cache without invalidate: exit %d, want 2", code)
		}
	})

	t.Run("pull", func(t *testing.T) {
		code, out, errOut := droverctl(t, "pull", "tiny", "--url", url)
		if code != 0 || !strings.Contains(out, "pulling manifest") || !strings.HasSuffix(out, "pulled tiny on every backend\n") {
			t.Fatalf("exit %d:\n%s%s", code, out, errOut)
		}
		code, out, errOut = droverctl(t, "pull", "--json", "--url", url, "tiny2")
		if code != 0 {
			t.Fatalf("exit %d: %s", code, errOut)
		}
		var last progress
		sc := bufio.NewScanner(strings.NewReader(out))
		lines := 0
		for sc.Scan() {
			if err := json.Unmarshal(sc.Bytes(), &last); err != nil {
				t.Fatalf("line %q: %v", sc.Text(), err)
			}
			lines++
		}
		if last.Status != "success" || lines < 5 {
			t.Errorf("%d NDJSON lines ending in %+v", lines, last)
		}
		for _, f := range fakes {
			if f.Requests("/api/pull") != 2 {
				t.Errorf("%s saw %d pulls, want 2 (every pull goes to every backend)", f.URL(), f.Requests("/api/pull"))
			}
		}
		if code, _, _ := droverctl(t, "pull", "--url", url); code != 2 {
			t.Errorf("pull without a model: exit %d, want 2", code)
		}
	})

	t.Run("unreachable", func(t *testing.T) {
		for _, args := range [][]string{{"status"}, {"cache", "invalidate"}, {"pull", "tiny"}} {
			if code, _, errOut := droverctl(t, append(args, "--url", "http://127.0.0.1:1")...); code != 1 || errOut == "" {
				t.Errorf("%v: exit %d %q, want 1 with a message", args, code, errOut)
			}
		}
	})
}

func TestProgressBars(t *testing.T) {
	var b bytes.Buffer
	v := &barView{w: &b}
	for _, p := range []progress{
		{Status: "pulling manifest"},
		{Status: "pulling abc", Digest: "sha256:abc", Total: 2000},
		{Status: "pulling abc", Digest: "sha256:abc", Total: 2000, Completed: 1000},
		{Status: "pulling def", Digest: "sha256:def", Total: 10},
		{Status: "pulling abc", Digest: "sha256:abc", Total: 2000, Completed: 2000},
		{Status: "success"},
	} {
		v.update(p, nil)
	}
	out := b.String()
	// The last redraw goes back up over the three rows and shows abc done.
	last := out[strings.LastIndex(out, "\x1b[3A"):]
	if !strings.Contains(last, "pulling manifest") || !strings.Contains(last, "100%  2.0 KB/2.0 KB") || !strings.Contains(last, "  0%  0 B/10 B") {
		t.Errorf("last frame %q", last)
	}
	if strings.Contains(out, "success") {
		t.Error("success is not a row")
	}
	if got := humanBytes(1_500_000_000); got != "1.5 GB" {
		t.Errorf("humanBytes = %q", got)
	}
}
