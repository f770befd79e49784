// Package launch starts the processes drover-bench measures (the fake
// Ollama backend and drover-proxy) as children of the benchmark, waits until
// they answer, and stops them. Children share the benchmark's session and
// CPU share on purpose: processes started with setsid got their own CPU
// share on the benchmark machine and ran much slower.
package launch

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Process is a started child that answers HTTP at URL.
type Process struct {
	Name    string
	URL     string // base URL, http://127.0.0.1:PORT
	LogPath string // where its stdout and stderr go
	cmd     *exec.Cmd
	exited  chan struct{} // closed when the process has been waited for
	waitErr error         // set before exited is closed
}

// FreePort asks the kernel for a free loopback port. Another process could
// take it before the child binds it; Start then fails readiness and says so.
func FreePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("finding a free port: %w", err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// Start runs bin with args, logging to logDir/name.log, and waits until
// GET url+readyPath answers 200 or ctx ends.
func Start(ctx context.Context, name, bin string, args []string, url, readyPath, logDir string) (*Process, error) {
	logPath := filepath.Join(logDir, name+".log")
	logFile, err := os.Create(logPath)
	if err != nil {
		return nil, fmt.Errorf("creating %s log: %w", name, err)
	}
	// Not CommandContext: the child must outlive the readiness context.
	cmd := exec.Command(bin, args...)
	cmd.Stdout = logFile
	cmd.Stderr = logFile
	if err := cmd.Start(); err != nil {
		logFile.Close()
		return nil, fmt.Errorf("starting %s (%s): %w", name, bin, err)
	}
	p := &Process{Name: name, URL: url, LogPath: logPath, cmd: cmd, exited: make(chan struct{})}
	go func() {
		p.waitErr = cmd.Wait()
		logFile.Close()
		close(p.exited)
	}()
	if err := p.waitReady(ctx, readyPath); err != nil {
		p.Stop()
		return nil, fmt.Errorf("%w (log: %s)", err, logPath)
	}
	return p, nil
}

func (p *Process) waitReady(ctx context.Context, path string) error {
	client := &http.Client{Timeout: time.Second}
	defer client.CloseIdleConnections()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		if err := Ready(ctx, client, p.URL+path); err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s not ready at %s: %w", p.Name, p.URL+path, ctx.Err())
		case <-p.exited:
			return fmt.Errorf("%s exited before it was ready: %v", p.Name, p.waitErr)
		case <-tick.C:
		}
	}
}

// Ready reports whether GET url answers 200.
func Ready(ctx context.Context, client *http.Client, url string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: status %d", url, resp.StatusCode)
	}
	return nil
}

// Stop asks the process to exit (SIGTERM), kills it after 5 s, and waits.
func (p *Process) Stop() error {
	select {
	case <-p.exited:
		return nil
	default:
	}
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("stopping %s: %w", p.Name, err)
	}
	select {
	case <-p.exited:
		return nil
	case <-time.After(5 * time.Second):
		p.cmd.Process.Kill()
		<-p.exited
		return fmt.Errorf("%s ignored SIGTERM for 5s and was killed", p.Name)
	}
}

// CPU returns the process's cumulative CPU time, user plus system, from
// /proc (0 if it cannot be read, e.g. not on Linux or after exit).
func (p *Process) CPU() time.Duration { return processCPU(p.cmd.Process.Pid) }

// clockTick is the kernel's USER_HZ, 100 on every Linux architecture Go
// supports.
const clockTick = 10 * time.Millisecond

func processCPU(pid int) time.Duration {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// The command name (field 2) may hold spaces; fields after it are fixed.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return 0
	}
	utime, err1 := strconv.ParseInt(f[11], 10, 64)
	stime, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0
	}
	return time.Duration(utime+stime) * clockTick
}
