package e2e

// A three-node NATS cluster (the real nats-server binary, three processes,
// deploy/nats/nats.conf's users and permissions plus routes with their own
// login) under the usage pipeline: the aggregator with nats.replicas 3, two
// proxies, load from the official Ollama Go client. One node is killed
// with SIGKILL (the USAGE stream's leader), brought back, then another (a
// non-leader), then two at once (no quorum). Clients see no error at any
// point, fleet state and cache invalidations keep flowing between the
// proxies after each loss, and ClickHouse ends up holding exactly what the
// clients were told. What the test measures (how long a new stream leader
// takes, how long a service's connection is down) is logged; the bounds
// are in docs/pipeline.md ("A NATS cluster").

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/droverhq/drover/testkit/chtest"
	"github.com/droverhq/drover/testkit/natstest"
	"github.com/droverhq/drover/testkit/ollamatest"
)

func TestNATSClusterNodeLossUnderLoad(t *testing.T) {
	cl := startNATSCluster(t, 3)
	ch := chtest.Start(t)
	_, backends := startFakes(t, 2, ollamatest.Config{ChunkDelay: time.Millisecond})
	common := []string{
		"DROVER_NATS_URL=" + cl.url(),
		"DROVER_NATS_REPLICAS=3",
		"DROVER_CLICKHOUSE_ADDR=" + ch.Addr(),
		"DROVER_BACKENDS=" + strings.Join(backends, ","),
		"DROVER_AUTH_KEYS=team-a:key-aaaaaaaa,team-b:key-bbbbbbbb,ops:" + adminKey + ":admin",
		"DROVER_ROUTING_MAX_CONCURRENCY=16",
		"DROVER_LOG_LEVEL=info",
	}
	aggMetrics := freeAddr(t)
	agg := start(t, "drover-aggregator", append(common, "DROVER_AGGREGATOR_METRICS_LISTEN="+aggMetrics,
		"DROVER_AGGREGATOR_FLUSH_INTERVAL=200ms", "DROVER_REPLICA=agg",
		"DROVER_NATS_USER=aggregator", "DROVER_NATS_PASSWORD="+natstest.AggregatorPassword))
	services := map[string]*proc{"aggregator": agg}
	var bases []string
	for i := range 2 {
		addr := freeAddr(t)
		name := fmt.Sprintf("proxy-%d", i)
		services[name] = start(t, "drover-proxy", append(common, "DROVER_LISTEN="+addr, "DROVER_REPLICA="+name,
			"DROVER_USAGE_SPOOL_DIR="+filepath.Join(t.TempDir(), "spool"),
			"DROVER_NATS_USER=proxy", "DROVER_NATS_PASSWORD="+natstest.ProxyPassword))
		bases = append(bases, "http://"+addr)
	}
	for _, b := range bases {
		waitHTTP(t, b+"/")
	}
	waitHTTP(t, "http://"+aggMetrics+"/health")

	// The test's own eyes: stream info as the aggregator's user, fleet
	// messages as the proxies' user, each over the whole cluster.
	js := cl.jetStream(t)
	usageStream := func() *jetstream.StreamInfo {
		ctx, cancel := context.WithTimeout(t.Context(), 2*time.Second)
		defer cancel()
		s, err := js.Stream(ctx, "USAGE")
		if err != nil {
			return nil
		}
		info, err := s.Info(ctx)
		if err != nil {
			return nil
		}
		return info
	}
	waitFor(t, 60*time.Second, "the USAGE stream on 3 nodes, every replica current", func() bool {
		return allCurrent(usageStream(), 3)
	})
	streamLeader := func() string {
		var leader string
		waitFor(t, 60*time.Second, "the USAGE stream's leader", func() bool {
			if info := usageStream(); info != nil && info.Cluster != nil {
				leader = info.Cluster.Leader
			}
			return leader != ""
		})
		return leader
	}
	witness := newFleetWitness(t, cl.url())

	load := startClusterLoad(t, bases)
	load.waitCompleted(t, 200)

	// 1. The stream's leader dies.
	leader := streamLeader()
	killed := cl.node(t, leader)
	cl.kill(t, killed, services, load, func() {
		waitFor(t, 60*time.Second, "a new USAGE leader", func() bool {
			info := usageStream()
			return info != nil && info.Cluster != nil && info.Cluster.Leader != "" && info.Cluster.Leader != leader
		})
	})
	checkFleetFlows(t, witness, bases, load)
	load.waitCompleted(t, load.completed()+200)
	logSpools(t, bases)
	cl.restart(t, killed)
	waitFor(t, 60*time.Second, "the restarted node to catch up", func() bool { return allCurrent(usageStream(), 3) })

	// 2. A node that does not lead the stream: the one most of Drover's
	// connections are on, so that they have to move.
	leader = streamLeader()
	var other *clusterNode
	for _, n := range cl.nodes {
		if n.name != leader && (other == nil || len(n.droverConns(t)) > len(other.droverConns(t))) {
			other = n
		}
	}
	cl.kill(t, other, services, load, func() {
		waitFor(t, 30*time.Second, "the USAGE stream to report the node offline", func() bool {
			info := usageStream()
			return info != nil && info.Cluster != nil && info.Cluster.Leader == leader && slices.ContainsFunc(info.Cluster.Replicas, func(p *jetstream.PeerInfo) bool {
				return p.Name == other.name && (p.Offline || !p.Current)
			})
		})
	})
	checkFleetFlows(t, witness, bases, load)
	load.waitCompleted(t, load.completed()+200)
	logSpools(t, bases)
	cl.restart(t, other)
	waitFor(t, 60*time.Second, "the restarted node to catch up", func() bool { return allCurrent(usageStream(), 3) })

	// 3. Two nodes at once: the stream has no quorum, publishing stalls.
	// Clients are still served, both proxies spool; once one node is back
	// they replay and nothing is lost or doubled.
	spooledBefore := make([]uint64, len(bases))
	for i, b := range bases {
		spooledBefore[i], _ = usageStats(b)
	}
	down := []*clusterNode{cl.nodes[0], cl.nodes[1]}
	t0 := time.Now()
	for _, n := range down {
		n.kill9(t)
	}
	for i, b := range bases {
		waitFor(t, 60*time.Second, fmt.Sprintf("proxy %d to spool while the stream has no quorum", i), func() bool {
			s, _ := usageStats(b)
			return s > spooledBefore[i]
		})
	}
	t.Logf("two of three nodes down: both proxies spooling %s after the kill; %d requests completed so far",
		time.Since(t0).Round(time.Millisecond), load.completed())
	load.waitCompleted(t, load.completed()+100) // clients are still served
	// Core NATS needs no quorum: fleet state goes on through the node left.
	checkFleetFlows(t, witness, bases, load)
	// Run-time keys live in the bucket drover_keys, on the same three
	// nodes: without a quorum a new key is refused, in the API's shape.
	t2 := time.Now()
	if code, body := createKey(t, bases[0], "cluster-key-0"); code != http.StatusServiceUnavailable || !strings.Contains(body, `"error"`) {
		t.Fatalf("creating a key without a quorum: %d %s, want 503 with an error", code, body)
	}
	t.Logf("a key created without a quorum: refused with 503 after %s", time.Since(t2).Round(time.Millisecond))
	// Long enough for the aggregator's leases (in drover_aggregator, on
	// the same nodes) to lapse: it has to take its partitions again.
	aggMetricsURL := "http://" + aggMetrics + "/metrics"
	waitFor(t, 60*time.Second, "the aggregator to lose its partition leases without a quorum", func() bool {
		return metric(aggMetricsURL, "drover_aggregator_leases_lost_total") > 0
	})
	t.Logf("the aggregator lost its first lease %s after the two nodes were killed", time.Since(t0).Round(time.Millisecond))
	cl.restart(t, down[0])
	t1 := time.Now()
	for i, b := range bases {
		waitFor(t, 90*time.Second, fmt.Sprintf("proxy %d to replay its spool once the quorum is back", i), func() bool {
			spooled, replayed := usageStats(b)
			return replayed >= spooled
		})
	}
	t.Logf("quorum back: spools replayed %s after the node's restart", time.Since(t1).Round(time.Millisecond))
	cl.restart(t, down[1])
	waitFor(t, 60*time.Second, "all three nodes current", func() bool { return allCurrent(usageStream(), 3) })
	// Once the cluster is whole again, a key created on one proxy serves on
	// the other. (With two of three nodes back the key bucket's own group
	// did not always take writes within a minute: 2 of 4 CI runs at load
	// 2-17; docs/pipeline.md.)
	var id, secret string
	waitFor(t, 90*time.Second, "a key to be created once the cluster is whole", func() bool {
		id = fmt.Sprintf("cluster-key-%d", time.Now().UnixNano())
		code, body := createKey(t, bases[0], id)
		var v struct{ Secret string }
		json.Unmarshal([]byte(body), &v) //nolint:errcheck // checked below
		secret = v.Secret
		return code == http.StatusCreated && secret != ""
	})
	waitFor(t, 60*time.Second, "proxy 1 to serve the key created on proxy 0", func() bool {
		model, m, err := ollamaRequest(ollamaClient(bases[1], secret), false)
		if err == nil {
			load.record(model, id, m, nil)
		}
		return err == nil
	})

	load.stop()
	if errs := load.errors(); len(errs) > 0 {
		t.Errorf("%d client requests failed; the first: %v", len(errs), errs[0])
	}
	t.Logf("%d requests completed for the clients; the aggregator lost %v partition leases on the way", load.completed(),
		metric(aggMetricsURL, "drover_aggregator_leases_lost_total"))
	for name, p := range services {
		if name == "aggregator" {
			continue
		}
		p.cmd.Process.Signal(syscall.SIGTERM)
		if err := p.cmd.Wait(); err != nil && p.cmd.ProcessState.ExitCode() != 0 {
			t.Fatalf("%s exited with %v", name, err)
		}
	}
	checkClickHouseHolds(t, ch.Addr(), load)
}

// createKey asks base to create a client key with this id (as the admin)
// and returns the status and body.
func createKey(t *testing.T, base, id string) (int, string) {
	t.Helper()
	req, _ := http.NewRequestWithContext(t.Context(), http.MethodPost, base+"/api/keys", strings.NewReader(`{"id":"`+id+`"}`))
	req.Header.Set("Authorization", "Bearer "+adminKey)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

// logSpools logs how many usage events each proxy has spooled (NATS did
// not acknowledge them in time) and replayed so far.
func logSpools(t *testing.T, bases []string) {
	t.Helper()
	for i, b := range bases {
		spooled, replayed := usageStats(b)
		t.Logf("  proxy-%d: %d usage events spooled so far, %d replayed", i, spooled, replayed)
	}
}

// allCurrent reports whether the stream is on n nodes with a leader and
// every follower current.
func allCurrent(info *jetstream.StreamInfo, n int) bool {
	if info == nil || info.Cluster == nil || info.Cluster.Leader == "" || info.Config.Replicas != n || len(info.Cluster.Replicas) != n-1 {
		return false
	}
	for _, p := range info.Cluster.Replicas {
		if !p.Current || p.Offline {
			return false
		}
	}
	return true
}

// --- Fleet state and invalidations between the proxies.

// fleetWitness hears the proxies' fleet messages through the cluster, as
// the proxies' own user.
type fleetWitness struct {
	mu   sync.Mutex           // guards last
	last map[string]time.Time // replica -> last drover.inflight heard
}

func newFleetWitness(t *testing.T, natsURL string) *fleetWitness {
	t.Helper()
	nc, err := nats.Connect(natsURL, nats.UserInfo("proxy", natstest.ProxyPassword),
		nats.CustomInboxPrefix("_INBOX_drover_proxy"), nats.MaxReconnects(-1), nats.ReconnectWait(100*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	w := &fleetWitness{last: map[string]time.Time{}}
	if _, err := nc.Subscribe("drover.inflight", func(m *nats.Msg) {
		var msg struct {
			Replica string `json:"replica"`
		}
		if json.Unmarshal(m.Data, &msg) == nil && msg.Replica != "" {
			w.mu.Lock()
			w.last[msg.Replica] = time.Now()
			w.mu.Unlock()
		}
	}); err != nil {
		t.Fatal(err)
	}
	return w
}

func (w *fleetWitness) heardSince(replica string, t0 time.Time) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.last[replica].After(t0)
}

// checkFleetFlows proves, after a node's loss, that both proxies publish
// fleet state into the cluster and count each other as peers, and that a
// cache invalidation sent to one reaches the other: the second proxy's
// model lists, which it otherwise keeps (cache.models_ttl) while the load
// goes on, are fetched again right after the first proxy was told to
// invalidate its caches.
func checkFleetFlows(t *testing.T, w *fleetWitness, bases []string, load *clusterLoad) {
	t.Helper()
	t0 := time.Now()
	for i := range bases {
		replica := fmt.Sprintf("proxy-%d", i)
		waitFor(t, 30*time.Second, replica+"'s fleet state heard through the cluster", func() bool { return w.heardSince(replica, t0) })
		other := fmt.Sprintf("proxy-%d", 1-i)
		waitFor(t, 30*time.Second, replica+" to count "+other+" as a peer", func() bool {
			st := fleetStatus(bases[i])
			return st.Mode == "fleet" && slices.Contains(st.Peers, other)
		})
	}

	refreshes := func() float64 { return modelListFetches(bases[1]) }
	before := refreshes()
	load.waitCompleted(t, load.completed()+50)
	if after := refreshes(); after != before {
		t.Fatalf("proxy 1 fetched model lists %v times under load without an invalidation: the check below would prove nothing", after-before)
	}
	req, _ := http.NewRequestWithContext(t.Context(), http.MethodPost, bases[0]+"/api/cache/invalidate", nil)
	req.Header.Set("Authorization", "Bearer "+adminKey)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("cache invalidate on proxy 0: %s", resp.Status)
	}
	waitFor(t, 30*time.Second, "proxy 0's invalidation to reach proxy 1 (its model lists fetched again)", func() bool {
		return refreshes() > before
	})
}

// modelListFetches is a proxy's drover_cache_refreshes_total{cache="models"}.
func modelListFetches(base string) float64 {
	req, _ := http.NewRequest(http.MethodGet, base+"/metrics", nil)
	req.Header.Set("Authorization", "Bearer "+adminKey)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return -1
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	var sum float64
	for _, line := range strings.Split(string(body), "\n") {
		if !strings.HasPrefix(line, "drover_cache_refreshes_total{") || !strings.Contains(line, `cache="models"`) {
			continue
		}
		var v float64
		if _, err := fmt.Sscan(line[strings.LastIndexByte(line, ' ')+1:], &v); err == nil {
			sum += v
		}
	}
	return sum
}

type fleetSync struct {
	Mode  string   `json:"mode"`
	Peers []string `json:"peers"`
}

func fleetStatus(base string) fleetSync {
	req, _ := http.NewRequest(http.MethodGet, base+"/health", nil)
	req.Header.Set("Authorization", "Bearer "+adminKey)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fleetSync{}
	}
	defer resp.Body.Close()
	var h struct {
		FleetSync fleetSync `json:"fleet_sync"`
	}
	json.NewDecoder(resp.Body).Decode(&h) //nolint:errcheck // empty on a bad answer
	return h.FleetSync
}
