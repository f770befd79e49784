package server

import (
	"context"
	"log/slog"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/droverhq/drover/pkg/config"
	"github.com/droverhq/drover/pkg/usagepub"
)

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met in time")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func contextWithTimeout(d time.Duration) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), d)
}

// natsOptions wires a replica to NATS as drover-proxy does: a usage
// publisher on one connection (spooling under a temporary directory), fleet
// state on another. Both close at cleanup, after a server whose cleanup is
// registered later.
func natsOptions(t *testing.T, n config.NATS, extra ...usagepub.Option) Options {
	t.Helper()
	pubConn, err := nats.Connect(n.URL)
	if err != nil {
		t.Fatal(err)
	}
	syncConn, err := nats.Connect(n.URL)
	if err != nil {
		t.Fatal(err)
	}
	opts := append([]usagepub.Option{usagepub.WithConfig(n, config.Usage{SpoolDir: t.TempDir()}), usagepub.WithLogger(slog.New(slog.DiscardHandler))}, extra...)
	pub, err := usagepub.New(pubConn, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		pub.Close(cctx) //nolint:errcheck
		pubConn.Close()
		syncConn.Close()
	})
	return Options{Sink: pub, SyncConn: syncConn}
}
