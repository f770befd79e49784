package usagepub

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/droverhq/drover/testkit/freeport"
)

// oldNATSVersion predates JetStream fast batches (NATS 2.14).
const oldNATSVersion = "v2.10.22"

// oldNATSServer builds nats-server oldNATSVersion from the Go module proxy
// once, into the user's cache directory, and returns the binary's path.
func oldNATSServer(t *testing.T) string {
	t.Helper()
	cache, err := os.UserCacheDir()
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(cache, "drover-test", "nats-server-"+oldNATSVersion)
	if _, err := os.Stat(bin); err == nil {
		return bin
	}
	mod := t.TempDir()
	run := func(args ...string) {
		cmd := exec.Command("go", args...)
		cmd.Dir = mod
		cmd.Env = append(os.Environ(), "GOWORK=off", "GOFLAGS=-mod=mod")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("go %v: %v\n%s", args, err, out)
		}
	}
	run("mod", "init", "oldnats")
	run("get", "github.com/nats-io/nats-server/v2@"+oldNATSVersion)
	run("build", "-o", bin, "github.com/nats-io/nats-server/v2")
	return bin
}

// A NATS server from before fast batches answers each message of a batch
// with its own PubAck: the publisher notices, re-sends that batch with one
// ack per event and stays in that mode. Every event is stored once.
func TestServerWithoutFastBatches(t *testing.T) {
	if testing.Short() {
		t.Skip("builds an old nats-server")
	}
	bin := oldNATSServer(t)
	port, err := freeport.Port()
	if err != nil {
		t.Fatal(err)
	}
	srv := exec.Command(bin, "-a", "127.0.0.1", "-p", fmt.Sprint(port), "-js", "-sd", t.TempDir())
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Process.Kill(); srv.Wait() }) //nolint:errcheck // killed on purpose
	url := fmt.Sprintf("nats://127.0.0.1:%d", port)
	nc := connect(t, url)
	waitFor(t, 10*time.Second, "the old nats-server to come up", nc.IsConnected)
	p := newPub(t, nc, t.TempDir())
	sent := newIDs()
	for i := 0; i < 3000; i++ {
		record(p, sent)
		if i%500 == 499 {
			waitDrained(t, p, 30*time.Second) // several batches
		}
	}
	waitDrained(t, p, 30*time.Second)
	closePub(t, p)
	if st := p.Stats(); st.Published != 3000 || st.Spooled != 0 || st.Dropped != 0 {
		t.Fatalf("stats %+v: want all 3000 published, none spooled", st)
	}
	checkExactlyOnce(t, url, sent)
}
