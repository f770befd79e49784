package launch

import (
	"bufio"
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/goleak"

	"github.com/droverhq/drover/services/bench/internal/bareproxy"
	"github.com/droverhq/drover/services/bench/internal/stubollama"
)

// helperEnv makes the test binary act as a child process: a fake Ollama, a
// Drover stand-in (a bare proxy configured from Drover's YAML), or a binary
// that exits at once.
const helperEnv = "DROVER_BENCH_LAUNCH_HELPER"

func TestMain(m *testing.M) {
	switch os.Getenv(helperEnv) {
	case "":
		goleak.VerifyTestMain(m)
	case "fake-ollama":
		addr := argAfter("-addr")
		if argAfter("-models") != "tiny" || argAfter("-chunks") != "20" {
			os.Exit(3)
		}
		serve(addr, &stubollama.Server{})
	case "drover":
		listen, backend := readConfig(argAfter("-config"))
		u, err := url.Parse(backend)
		if err != nil {
			os.Exit(4)
		}
		serve(listen, bareproxy.New(u))
	default:
		os.Exit(5)
	}
}

func argAfter(name string) string {
	for i, a := range os.Args[:len(os.Args)-1] {
		if a == name {
			return os.Args[i+1]
		}
	}
	return ""
}

func serve(addr string, h http.Handler) {
	if err := http.ListenAndServe(addr, h); err != nil {
		os.Exit(6)
	}
}

// readConfig pulls listen and the first backend url out of the YAML that
// DroverConfig writes, without a YAML library.
func readConfig(path string) (listen, backend string) {
	f, err := os.Open(path)
	if err != nil {
		os.Exit(7)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if v, ok := strings.CutPrefix(line, "listen: "); ok {
			listen = v
		}
		if v, ok := strings.CutPrefix(line, "url: "); ok && backend == "" {
			backend = v
		}
	}
	return listen, backend
}

func TestStartBackendAndDrover(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	dir := t.TempDir()

	t.Setenv(helperEnv, "fake-ollama")
	backend, err := StartFakeOllama(ctx, os.Args[0], dir)
	if err != nil {
		t.Fatal(err)
	}
	defer backend.Stop()

	t.Setenv(helperEnv, "drover")
	drover, err := StartDrover(ctx, os.Args[0], backend.URL, dir)
	if err != nil {
		t.Fatal(err)
	}
	defer drover.Stop()

	client := &http.Client{Timeout: 5 * time.Second}
	defer client.CloseIdleConnections()
	resp, err := client.Post(drover.URL+"/api/chat", "application/json",
		strings.NewReader(`{"model":"tiny","messages":[],"stream":false}`))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("chat through drover stand-in: status %d", resp.StatusCode)
	}

	if err := drover.Stop(); err != nil {
		t.Errorf("stopping drover: %v", err)
	}
	if err := backend.Stop(); err != nil {
		t.Errorf("stopping backend: %v", err)
	}
	if Ready(ctx, client, backend.URL+"/api/version") == nil {
		t.Error("backend still answers after Stop")
	}
}

func TestStartFailsWhenChildExits(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	t.Setenv(helperEnv, "exit")
	_, err := Start(ctx, "quitter", os.Args[0], nil, "http://127.0.0.1:1", "/", t.TempDir())
	if err == nil || !strings.Contains(err.Error(), "exited before it was ready") {
		t.Fatalf("got %v, want an exited-before-ready error", err)
	}
}

func TestDroverConfig(t *testing.T) {
	want := `listen: 127.0.0.1:8080
backends:
  - name: fake
    url: http://127.0.0.1:9090
routing:
  max_concurrency: 1024
  queue:
    max_length: 4096
    max_wait: 30s
`
	if got := DroverConfig(8080, "http://127.0.0.1:9090"); got != want {
		t.Errorf("got\n%s\nwant\n%s", got, want)
	}
}

func TestDroverNATSConfig(t *testing.T) {
	got := DroverNATSConfig(8080, "http://127.0.0.1:9090", "nats://127.0.0.1:4222", "/tmp/x/spool")
	want := DroverConfig(8080, "http://127.0.0.1:9090") + `nats:
  url: nats://127.0.0.1:4222
usage:
  spool_dir: /tmp/x/spool
`
	if got != want {
		t.Errorf("got\n%s\nwant\n%s", got, want)
	}
}

// The embedded server speaks NATS with JetStream on, and the second Drover
// gets its own config naming it.
// nats-server as its own process, built from the module the bench depends
// on, with its CPU time readable.
func TestStartNATSProcess(t *testing.T) {
	if testing.Short() {
		t.Skip("builds nats-server")
	}
	dir := t.TempDir()
	bin := filepath.Join(dir, "nats-server")
	if out, err := exec.Command("go", "build", "-o", bin, "github.com/nats-io/nats-server/v2").CombinedOutput(); err != nil {
		t.Fatalf("building nats-server: %v\n%s", err, out)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	n, err := StartNATSProcess(ctx, bin, dir)
	if err != nil {
		t.Fatal(err)
	}
	defer n.Stop()
	nc, err := nats.Connect(n.URL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	for range 200 {
		if _, err := js.AccountInfo(ctx); err != nil {
			t.Fatalf("JetStream on the nats-server process: %v", err)
		}
	}
	if cpu := n.CPU(); cpu == nil || cpu() <= 0 {
		t.Errorf("CPU of the nats-server process not readable")
	}
	if err := n.Stop(); err != nil {
		t.Fatal(err)
	}
}

func TestStartNATSAndDroverNATS(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	dir := t.TempDir()
	n, err := StartNATS(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer n.Stop()
	u, err := url.Parse(n.URL())
	if err != nil {
		t.Fatal(err)
	}
	conn, err := net.DialTimeout("tcp", u.Host, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	info, err := bufio.NewReader(conn).ReadString('\n')
	conn.Close()
	if err != nil || !strings.HasPrefix(info, "INFO ") || !strings.Contains(info, `"jetstream":true`) {
		t.Fatalf("embedded NATS greeting %q (%v), want INFO with jetstream", info, err)
	}

	backend := httptest.NewServer(&stubollama.Server{})
	defer backend.Close()
	t.Setenv(helperEnv, "drover")
	p, err := StartDroverNATS(ctx, os.Args[0], backend.URL, n.URL(), dir)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Stop()
	cfg, err := os.ReadFile(filepath.Join(dir, "drover-proxy-nats.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(cfg), "url: "+n.URL()) || !strings.Contains(string(cfg), "spool_dir: "+filepath.Join(dir, "spool")) {
		t.Errorf("drover+nats config lacks the NATS URL or spool dir:\n%s", cfg)
	}
	if err := p.Stop(); err != nil {
		t.Errorf("stopping: %v", err)
	}
}
