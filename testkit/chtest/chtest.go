// Package chtest runs a real clickhouse-server for tests: its own temporary
// config, data directory and free ports on 127.0.0.1, with Stop and Restart
// on the same ports and data so that tests can take ClickHouse away and bring
// it back.
//
// The binary is $CLICKHOUSE_SERVER, or clickhouse-server from PATH, /usr/bin or /usr/sbin. When it is
// missing the test fails, unless DROVER_ALLOW_SKIP=1, in which case it skips.
package chtest

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"text/template"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"

	"github.com/droverhq/drover/testkit/freeport"
)

// Server is one clickhouse-server process owned by a test.
type Server struct {
	t       testing.TB
	bin     string
	dir     string
	tcpPort int

	mu   sync.Mutex // guards cmd and done
	cmd  *exec.Cmd
	done chan struct{}
}

// Start starts a server and stops it when the test ends. It returns once the
// server answers on its native port.
func Start(t testing.TB) *Server {
	t.Helper()
	bin, err := findBinary()
	if err != nil {
		if os.Getenv("DROVER_ALLOW_SKIP") == "1" {
			t.Skipf("chtest: %v; skipping because DROVER_ALLOW_SKIP=1", err)
		}
		t.Fatalf("chtest: %v (install Debian's clickhouse-server, or set DROVER_ALLOW_SKIP=1 to skip ClickHouse tests)", err)
	}
	dir := t.TempDir()
	ports := freePorts(t, 3)
	s := &Server{t: t, bin: bin, dir: dir, tcpPort: ports[0]}
	if err := writeConfig(dir, ports); err != nil {
		t.Fatalf("chtest: %v", err)
	}
	s.start()
	t.Cleanup(s.Stop)
	return s
}

// findBinary honours $CLICKHOUSE_SERVER, then looks in PATH and the places
// Debian installs the server.
func findBinary() (string, error) {
	if bin := os.Getenv("CLICKHOUSE_SERVER"); bin != "" {
		if _, err := os.Stat(bin); err != nil {
			return "", fmt.Errorf("CLICKHOUSE_SERVER=%s: %w", bin, err)
		}
		return bin, nil
	}
	if bin, err := exec.LookPath("clickhouse-server"); err == nil {
		return bin, nil
	}
	for _, bin := range []string{"/usr/bin/clickhouse-server", "/usr/sbin/clickhouse-server"} {
		if _, err := os.Stat(bin); err == nil {
			return bin, nil
		}
	}
	return "", fmt.Errorf("clickhouse-server not found in PATH, /usr/bin or /usr/sbin")
}

// Addr is host:port of the native protocol, stable across Restart.
func (s *Server) Addr() string { return fmt.Sprintf("127.0.0.1:%d", s.tcpPort) }

// Dir is the server's temporary directory (config, data and logs).
func (s *Server) Dir() string { return s.dir }

// Stop terminates the server and waits for it; it is safe to call twice.
func (s *Server) Stop() {
	s.mu.Lock()
	cmd, done := s.cmd, s.done
	s.cmd = nil
	s.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-done:
	case <-time.After(15 * time.Second):
		_ = cmd.Process.Kill()
		<-done
	}
	// The port must be free before a Restart binds it again.
	waitClosed(s.Addr(), 5*time.Second)
}

// Kill ends the server with SIGKILL, like a crash.
func (s *Server) Kill() {
	s.mu.Lock()
	cmd, done := s.cmd, s.done
	s.cmd = nil
	s.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Kill()
	<-done
	waitClosed(s.Addr(), 5*time.Second)
}

// Restart starts the server again with the same ports and data.
func (s *Server) Restart() {
	s.t.Helper()
	s.Stop()
	s.start()
}

func (s *Server) start() {
	s.t.Helper()
	cmd := exec.Command(s.bin, "--config-file="+filepath.Join(s.dir, "config.xml"))
	cmd.Dir = s.dir
	out, err := os.OpenFile(filepath.Join(s.dir, "stdout.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		s.t.Fatalf("chtest: %v", err)
	}
	cmd.Stdout, cmd.Stderr = out, out
	// Its own process group, so that a test binary killed by a signal does
	// not leave the server behind holding the terminal.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		out.Close()
		s.t.Fatalf("chtest: starting %s: %v", s.bin, err)
	}
	done := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		out.Close()
		close(done)
	}()
	s.mu.Lock()
	s.cmd, s.done = cmd, done
	s.mu.Unlock()

	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case <-done:
			s.t.Fatalf("chtest: clickhouse-server exited during start-up\n%s", s.logTail())
		default:
		}
		if ready(s.Addr()) {
			return
		}
		time.Sleep(25 * time.Millisecond)
	}
	s.t.Fatalf("chtest: clickhouse-server not ready on %s after 30s\n%s", s.Addr(), s.logTail())
}

// LogTail returns the end of the server's logs, for failure messages.
func (s *Server) LogTail() string { return s.logTail() }

func (s *Server) logTail() string {
	var b strings.Builder
	for _, name := range []string{"stdout.log", "server.err.log", "server.log"} {
		raw, err := os.ReadFile(filepath.Join(s.dir, name))
		if err != nil || len(raw) == 0 {
			continue
		}
		lines := bytes.Split(bytes.TrimRight(raw, "\n"), []byte("\n"))
		if len(lines) > 30 {
			lines = lines[len(lines)-30:]
		}
		fmt.Fprintf(&b, "--- %s (tail) ---\n%s\n", name, bytes.Join(lines, []byte("\n")))
	}
	return b.String()
}

// ready reports whether the server answers a ping on its native port; the
// port accepts connections a little before queries succeed.
func ready(addr string) bool {
	conn, err := clickhouse.Open(&clickhouse.Options{
		Addr:        []string{addr},
		DialTimeout: 200 * time.Millisecond,
		ReadTimeout: time.Second,
	})
	if err != nil {
		return false
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	return conn.Ping(ctx) == nil
}

func waitClosed(addr string, d time.Duration) {
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		c, err := net.DialTimeout("tcp", addr, 100*time.Millisecond)
		if err != nil {
			return
		}
		c.Close()
		time.Sleep(25 * time.Millisecond)
	}
}

// freePorts finds n distinct free ports (testkit/freeport: outside the
// kernel's ephemeral range, never the same one twice in a process).
func freePorts(t testing.TB, n int) []int {
	t.Helper()
	ports := make([]int, 0, n)
	for len(ports) < n {
		p, err := freeport.Port()
		if err != nil {
			t.Fatalf("chtest: %v", err)
		}
		ports = append(ports, p)
	}
	return ports
}

func writeConfig(dir string, ports []int) error {
	for _, sub := range []string{"data", "data/tmp", "data/user_files", "data/format_schemas"} {
		if err := os.MkdirAll(filepath.Join(dir, sub), 0o755); err != nil {
			return err
		}
	}
	data := map[string]any{"Dir": dir, "TCP": ports[0], "HTTP": ports[1], "Interserver": ports[2]}
	for name, tmpl := range map[string]*template.Template{"config.xml": configXML, "users.xml": usersXML} {
		var b bytes.Buffer
		if err := tmpl.Execute(&b, data); err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(dir, name), b.Bytes(), 0o644); err != nil {
			return err
		}
	}
	return nil
}

// Small caches and no system log tables keep start-up near half a second,
// so that tests can start several servers.
var configXML = template.Must(template.New("config").Parse(`<?xml version="1.0"?>
<yandex>
  <logger>
    <level>information</level>
    <log>{{.Dir}}/server.log</log>
    <errorlog>{{.Dir}}/server.err.log</errorlog>
    <size>50M</size>
    <count>1</count>
  </logger>
  <listen_host>127.0.0.1</listen_host>
  <tcp_port>{{.TCP}}</tcp_port>
  <http_port>{{.HTTP}}</http_port>
  <interserver_http_port>{{.Interserver}}</interserver_http_port>
  <interserver_http_host>127.0.0.1</interserver_http_host>
  <path>{{.Dir}}/data/</path>
  <tmp_path>{{.Dir}}/data/tmp/</tmp_path>
  <user_files_path>{{.Dir}}/data/user_files/</user_files_path>
  <format_schema_path>{{.Dir}}/data/format_schemas/</format_schema_path>
  <users_config>{{.Dir}}/users.xml</users_config>
  <default_profile>default</default_profile>
  <default_database>default</default_database>
  <timezone>UTC</timezone>
  <mark_cache_size>67108864</mark_cache_size>
  <uncompressed_cache_size>67108864</uncompressed_cache_size>
  <max_concurrent_queries>100</max_concurrent_queries>
  <mlock_executable>false</mlock_executable>
</yandex>
`))

var usersXML = template.Must(template.New("users").Parse(`<?xml version="1.0"?>
<yandex>
  <profiles><default><max_memory_usage>4000000000</max_memory_usage></default></profiles>
  <users>
    <default>
      <password></password>
      <networks><ip>127.0.0.1</ip><ip>::1</ip></networks>
      <profile>default</profile>
      <quota>default</quota>
    </default>
  </users>
  <quotas><default><interval><duration>3600</duration><queries>0</queries><errors>0</errors><result_rows>0</result_rows><read_rows>0</read_rows><execution_time>0</execution_time></interval></default></quotas>
</yandex>
`))
