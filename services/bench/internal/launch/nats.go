package launch

import (
	"context"
	"fmt"
	"path/filepath"
	"strconv"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// NATS is a NATS server with JetStream for the drover+nats target: its own
// process (StartNATSProcess, as deployed) or embedded in drover-bench
// (StartNATS). Either way it shares the machine with everything else
// measured.
type NATS struct {
	srv  *server.Server
	proc *Process
	url  string
}

// StartNATSProcess runs the nats-server binary bin with JetStream on free
// loopback ports, storing streams under dir/nats, and waits until its
// monitoring endpoint reports healthy.
func StartNATSProcess(ctx context.Context, bin, dir string) (*NATS, error) {
	port, err := FreePort()
	if err != nil {
		return nil, err
	}
	mon, err := FreePort()
	if err != nil {
		return nil, err
	}
	args := []string{"-a", "127.0.0.1", "-p", strconv.Itoa(port), "-m", strconv.Itoa(mon),
		"-js", "-sd", filepath.Join(dir, "nats")}
	p, err := Start(ctx, "nats-server", bin, args, fmt.Sprintf("http://127.0.0.1:%d", mon), "/healthz", dir)
	if err != nil {
		return nil, err
	}
	return &NATS{proc: p, url: fmt.Sprintf("nats://127.0.0.1:%d", port)}, nil
}

// StartNATS starts NATS with JetStream on a free loopback port, storing
// streams under dir/nats.
func StartNATS(dir string) (*NATS, error) {
	port, err := FreePort()
	if err != nil {
		return nil, err
	}
	srv, err := server.NewServer(&server.Options{
		Host:      "127.0.0.1",
		Port:      port,
		JetStream: true,
		StoreDir:  filepath.Join(dir, "nats"),
		NoLog:     true,
		NoSigs:    true,
	})
	if err != nil {
		return nil, fmt.Errorf("configuring embedded NATS: %w", err)
	}
	go srv.Start()
	if !srv.ReadyForConnections(10 * time.Second) {
		srv.Shutdown()
		srv.WaitForShutdown()
		return nil, fmt.Errorf("embedded NATS not ready on port %d", port)
	}
	return &NATS{srv: srv, url: srv.ClientURL()}, nil
}

// URL is the client URL.
func (n *NATS) URL() string { return n.url }

// Stop shuts the server down and waits for it.
func (n *NATS) Stop() error {
	if n.proc != nil {
		return n.proc.Stop()
	}
	n.srv.Shutdown()
	n.srv.WaitForShutdown()
	return nil
}

// CPU returns the server process's cumulative CPU time, or nil when NATS is
// embedded (its CPU cannot be told apart from drover-bench's).
func (n *NATS) CPU() func() time.Duration {
	if n.proc == nil {
		return nil
	}
	return n.proc.CPU
}
