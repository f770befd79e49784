package conformance

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ollama/ollama/api"

	"github.com/droverhq/drover/pkg/config"
	"github.com/droverhq/drover/services/proxy/internal/server"
	"github.com/droverhq/drover/testkit/freeport"
)

// enabled is set by DROVER_CONFORMANCE=1; without it every test skips, so
// plain `make test` passes on a machine without Ollama.
var enabled = os.Getenv("DROVER_CONFORMANCE") == "1"

// The two real servers every test shares. A has every model; B lacks tiny2
// and tiny-alias, so the fleet's lists overlap without being equal.
var (
	srvA, srvB *ollama
	tools      struct{ bin, src, tmp string }
)

var (
	modelsA = []string{"tiny", "tiny2", "tiny-fixed", "tiny-embed"}
	modelsB = []string{"tiny", "tiny-fixed", "tiny-embed"}
)

func need(t *testing.T) {
	t.Helper()
	if !enabled {
		t.Skip("real-Ollama conformance: set DROVER_CONFORMANCE=1 (make conformance)")
	}
}

func TestMain(m *testing.M) {
	if !enabled {
		os.Exit(m.Run())
	}
	os.Exit(setupAndRun(m))
}

func setupAndRun(m *testing.M) int {
	dir := os.Getenv("REALOLLAMA_DIR")
	if dir == "" {
		home, _ := os.UserHomeDir()
		dir = filepath.Join(home, ".cache", "realollama")
	}
	tools.bin, tools.src = filepath.Join(dir, "bin", "ollama"), filepath.Join(dir, "src")
	for _, p := range []string{tools.bin, filepath.Join(tools.src, "Modelfile.tiny"), filepath.Join(tools.src, "tiny.gguf")} {
		if _, err := os.Stat(p); err != nil {
			fmt.Fprintf(os.Stderr, "conformance: real Ollama is missing (%v).\nBuild it: .ci/realollama/setup.sh build && .ci/realollama/setup.sh models\n", err)
			return 1
		}
	}
	tmp, err := os.MkdirTemp("", "ollama-conformance-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "conformance:", err)
		return 1
	}
	tools.tmp = tmp
	defer os.RemoveAll(tmp)

	start := time.Now()
	var wg sync.WaitGroup
	var errA, errB error
	srvA, srvB = &ollama{name: "a"}, &ollama{name: "b"}
	wg.Add(2)
	go func() { defer wg.Done(); errA = srvA.start(modelsA, true) }()
	go func() { defer wg.Done(); errB = srvB.start(modelsB, false) }()
	wg.Wait()
	defer srvA.stop()
	defer srvB.stop()
	if err := errors.Join(errA, errB); err != nil {
		fmt.Fprintln(os.Stderr, "conformance: starting Ollama:", err)
		return 1
	}
	fmt.Fprintf(os.Stderr, "conformance: two Ollama servers (%s, %s) ready in %s\n", srvA.url, srvB.url, time.Since(start).Round(time.Millisecond))
	return m.Run()
}

// ollama is one real `ollama serve` with its own models directory, so that
// copy, delete and create in the tests touch nothing outside.
type ollama struct {
	name   string
	url    string
	host   string // host:port, for OLLAMA_HOST
	models string
	cmd    *exec.Cmd
	log    string
	done   chan struct{}
}

func freePort() (int, error) {
	return freeport.Port()
}

// start runs `ollama serve` as setup.sh does (HOME and OLLAMA_MODELS in the
// temporary directory) with OLLAMA_NUM_PARALLEL=1, then creates models on it
// from the realollama sources.
func (o *ollama) start(models []string, alias bool) error {
	if err := o.serve(models, "OLLAMA_NUM_PARALLEL=1", "OLLAMA_MAX_LOADED_MODELS=4"); err != nil {
		return err
	}
	if alias {
		if out, err := o.cli("", "cp", "tiny", "tiny-alias"); err != nil {
			return fmt.Errorf("ollama cp on %s: %v\n%s", o.name, err, out)
		}
	}
	return nil
}

// serve starts `ollama serve` on a free port with env added to its
// environment, waits until it answers, and creates models on it.
func (o *ollama) serve(models []string, env ...string) error {
	port, err := freePort()
	if err != nil {
		return err
	}
	base := filepath.Join(tools.tmp, o.name)
	o.models = filepath.Join(base, "models")
	o.host = fmt.Sprintf("127.0.0.1:%d", port)
	o.url = "http://" + o.host
	o.log = filepath.Join(base, "serve.log")
	if err := os.MkdirAll(filepath.Join(base, "home"), 0o755); err != nil {
		return err
	}
	if err := os.MkdirAll(o.models, 0o755); err != nil {
		return err
	}
	logf, err := os.Create(o.log)
	if err != nil {
		return err
	}
	o.cmd = exec.Command(tools.bin, "serve")
	o.cmd.Env = append(append(cleanEnv(), "HOME="+filepath.Join(base, "home"), "OLLAMA_HOST="+o.host, "OLLAMA_MODELS="+o.models), env...)
	o.cmd.Stdout, o.cmd.Stderr = logf, logf
	// Its own process group, so the runners it spawns can be stopped with it.
	o.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := o.cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("starting %s: %w", tools.bin, err)
	}
	o.done = make(chan struct{})
	go func() { o.cmd.Wait(); logf.Close(); close(o.done) }() //nolint:errcheck // exit status is in the log
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := http.Get(o.url + "/api/version")
		if err == nil {
			resp.Body.Close()
			break
		}
		select {
		case <-o.done:
			return fmt.Errorf("ollama %s exited at start; log:\n%s", o.name, tail(o.log))
		default:
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("ollama %s did not answer in 30s; log:\n%s", o.name, tail(o.log))
		}
		time.Sleep(50 * time.Millisecond)
	}
	for _, m := range models {
		if out, err := o.cli(tools.src, "create", m, "-f", "Modelfile."+m); err != nil {
			return fmt.Errorf("ollama create %s on %s: %v\n%s", m, o.name, err, out)
		}
	}
	return nil
}

// cli runs the ollama CLI against this server.
func (o *ollama) cli(dir string, args ...string) (string, error) {
	return runCLI(o.host, dir, args...)
}

// runCLI runs the real ollama CLI with OLLAMA_HOST=host.
func runCLI(host, dir string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, tools.bin, args...)
	cmd.Dir = dir
	home := filepath.Join(tools.tmp, "clienthome")
	os.MkdirAll(home, 0o755) //nolint:errcheck // the command reports it
	cmd.Env = append(cleanEnv(), "HOME="+home, "OLLAMA_HOST="+host, "TERM=dumb", "NO_COLOR=1")
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// cleanEnv is the environment without OLLAMA_* settings a developer may have.
func cleanEnv() []string {
	var out []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "OLLAMA_") && !strings.HasPrefix(kv, "HOME=") {
			out = append(out, kv)
		}
	}
	return out
}

// stop sends SIGTERM (ollama stops its runners on it), then kills what is
// left of its process group.
func (o *ollama) stop() {
	if o.cmd == nil || o.cmd.Process == nil {
		return
	}
	o.cmd.Process.Signal(syscall.SIGTERM) //nolint:errcheck // may be gone
	select {
	case <-o.done:
	case <-time.After(10 * time.Second):
	}
	syscall.Kill(-o.cmd.Process.Pid, syscall.SIGKILL) //nolint:errcheck // usually nothing is left
	<-o.done
}

func tail(path string) string {
	b, _ := os.ReadFile(path)
	if len(b) > 3000 {
		b = b[len(b)-3000:]
	}
	return string(b)
}

// drover is an in-process Drover in front of both servers.
type drover struct {
	srv    *server.Server
	url    string
	host   string
	client *api.Client
}

// newDrover starts a Drover over A and B; mutate adjusts its configuration.
func newDrover(t *testing.T, mutate func(*config.Config)) *drover {
	t.Helper()
	cfg := &config.Config{Replica: "conformance"}
	cfg.Backends = []config.Backend{{Name: "a", URL: srvA.url}, {Name: "b", URL: srvB.url}}
	if mutate != nil {
		mutate(cfg)
	}
	loaded, err := config.FromStruct(cfg)
	if err != nil {
		t.Fatal(err)
	}
	d := &drover{srv: server.New(loaded, slog.New(slog.NewTextHandler(io.Discard, nil)), server.Options{})}
	hs := httptest.NewServer(d.srv.Handler())
	t.Cleanup(func() {
		hs.CloseClientConnections()
		hs.Close()
		d.srv.Close()
	})
	d.url = hs.URL
	u, _ := url.Parse(hs.URL)
	d.host = u.Host
	d.client = api.NewClient(u, &http.Client{})
	return d
}

// reply is one HTTP answer, read whole.
type reply struct {
	status int
	header http.Header
	body   []byte
}

var httpClient = &http.Client{Timeout: 2 * time.Minute}

func send(t *testing.T, method, u, body string) reply {
	t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequestWithContext(t.Context(), method, u, rd)
	if err != nil {
		t.Fatal(err)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := httpClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, u, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: reading body: %v", method, u, err)
	}
	return reply{status: resp.StatusCode, header: resp.Header, body: b}
}

// lines splits an NDJSON body.
func lines(b []byte) [][]byte {
	var out [][]byte
	for _, l := range bytes.Split(b, []byte("\n")) {
		if len(bytes.TrimSpace(l)) > 0 {
			out = append(out, l)
		}
	}
	return out
}
