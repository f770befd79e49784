package natsconn

import (
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"github.com/droverhq/drover/pkg/config"
)

// startRouted starts n embedded servers routed to each other on loopback
// (each on ports of its own choosing, the later ones routed to the first,
// gossip completes the mesh), stopped when the test ends, and returns them
// with the client URL list nats.url would hold ("nats://a,nats://b").
func startRouted(t *testing.T, n int) ([]*server.Server, string) {
	t.Helper()
	var servers []*server.Server
	var urls []string
	for i := range n {
		opts := &server.Options{
			ServerName: fmt.Sprintf("n%d", i), Host: "127.0.0.1", Port: -1, NoLog: true, NoSigs: true,
			Cluster: server.ClusterOpts{Name: "test", Host: "127.0.0.1", Port: -1},
		}
		if i > 0 {
			opts.Routes = server.RoutesFromStr("nats://" + servers[0].ClusterAddr().String())
		}
		s, err := server.NewServer(opts)
		if err != nil {
			t.Fatal(err)
		}
		go s.Start()
		if !s.ReadyForConnections(10 * time.Second) {
			t.Fatalf("server %d not ready", i)
		}
		t.Cleanup(func() { s.Shutdown(); s.WaitForShutdown() })
		servers = append(servers, s)
		urls = append(urls, s.ClientURL())
	}
	for i, s := range servers {
		waitFor(t, fmt.Sprintf("server %d to route to the others", i), func() bool { return s.NumRoutes() >= n-1 })
	}
	return servers, strings.Join(urls, ",")
}

// A cluster's node goes away: the connection moves to another node by
// itself, says so in the log (which server was lost, which one took over,
// after how long), and its subscriptions carry on there.
func TestReconnectsToAnotherClusterNode(t *testing.T) {
	servers, urls := startRouted(t, 2)
	var logs logBuffer
	nc, err := Connect(config.NATS{URL: urls}, "drover-proxy r1 sync", slog.New(slog.NewTextHandler(&logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	got := make(chan string, 16)
	if _, err := nc.Subscribe("drover.test", func(m *nats.Msg) { got <- string(m.Data) }); err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	first := nc.ConnectedUrl()
	var lost, other *server.Server
	for _, s := range servers {
		if s.ClientURL() == first {
			lost = s
		} else {
			other = s
		}
	}
	if lost == nil {
		t.Fatalf("connected to %s, none of %s", first, urls)
	}
	lost.Shutdown()
	lost.WaitForShutdown()
	waitFor(t, "the connection to move to the other node", func() bool {
		return nc.IsConnected() && nc.ConnectedUrl() == other.ClientURL()
	})
	waitFor(t, "the reconnection in the log", func() bool { return strings.Contains(logs.String(), "NATS reconnected") })
	log := logs.String()
	for _, want := range []string{"NATS connection lost", "server=" + first, "server=" + other.ClientURL(), "down_for="} {
		if !strings.Contains(log, want) {
			t.Errorf("log lacks %q:\n%s", want, log)
		}
	}
	// A peer on the surviving node reaches the moved subscription.
	peer, err := nats.Connect(other.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer peer.Close()
	deadline := time.After(10 * time.Second)
	for {
		// The subscription is re-sent on reconnect; until the server has
		// it, a publish finds nobody, so publish until one arrives.
		if err := peer.Publish("drover.test", []byte("after")); err != nil {
			t.Fatal(err)
		}
		select {
		case m := <-got:
			if m != "after" {
				t.Fatalf("got %q", m)
			}
			return
		case <-time.After(50 * time.Millisecond):
		case <-deadline:
			t.Fatal("the subscription did not carry on on the other node")
		}
	}
}
