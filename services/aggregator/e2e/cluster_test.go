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
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/ollama/ollama/api"

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
	witness := newFleetWitness(t, cl.url())

	load := startClusterLoad(t, bases)
	load.waitCompleted(t, 200)

	// 1. The stream's leader dies.
	leader := usageStream().Cluster.Leader
	killed := cl.node(t, leader)
	cl.kill(t, killed, services, load, func() {
		waitFor(t, 60*time.Second, "a new USAGE leader", func() bool {
			info := usageStream()
			return info != nil && info.Cluster.Leader != "" && info.Cluster.Leader != leader
		})
	})
	checkFleetFlows(t, witness, bases, load)
	load.waitCompleted(t, load.completed()+200)
	logSpools(t, bases)
	cl.restart(t, killed)
	waitFor(t, 60*time.Second, "the restarted node to catch up", func() bool { return allCurrent(usageStream(), 3) })

	// 2. A node that does not lead the stream: the one most of Drover's
	// connections are on, so that they have to move.
	leader = usageStream().Cluster.Leader
	var other *clusterNode
	for _, n := range cl.nodes {
		if n.name != leader && (other == nil || len(n.droverConns(t)) > len(other.droverConns(t))) {
			other = n
		}
	}
	cl.kill(t, other, services, load, func() {
		waitFor(t, 30*time.Second, "the USAGE stream to report the node offline", func() bool {
			info := usageStream()
			return info != nil && info.Cluster.Leader == leader && slices.ContainsFunc(info.Cluster.Replicas, func(p *jetstream.PeerInfo) bool {
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

	load.stop()
	if errs := load.errors(); len(errs) > 0 {
		t.Errorf("%d client requests failed; the first: %v", len(errs), errs[0])
	}
	t.Logf("%d requests completed for the clients", load.completed())
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

// --- The cluster: real nats-server processes.

var (
	natsServerOnce sync.Once
	natsServerBin  string
	natsServerErr  error
)

// natsServer builds the nats-server binary of this workspace's version
// once, beside the Drover binaries.
func natsServer(t *testing.T) string {
	t.Helper()
	natsServerOnce.Do(func() {
		natsServerBin = filepath.Join(binDir, "nats-server")
		out, err := exec.Command("go", "build", "-o", natsServerBin, "github.com/nats-io/nats-server/v2").CombinedOutput()
		if err != nil {
			natsServerErr = fmt.Errorf("building nats-server: %v\n%s", err, out)
		}
	})
	if natsServerErr != nil {
		t.Fatal(natsServerErr)
	}
	return natsServerBin
}

type natsCluster struct {
	nodes []*clusterNode
}

type clusterNode struct {
	name, conf    string
	port, monitor int
	cmd           *exec.Cmd
	log           *bytes.Buffer
	mu            *sync.Mutex
	restarts      int
	bin           string
}

// startNATSCluster starts n nodes from deploy/nats/nats.conf, each with a
// store of its own, routed to each other on loopback with a route login
// (as deploy/k8s/nats.yaml and make run's NATS_CLUSTER=3 do).
func startNATSCluster(t *testing.T, n int) *natsCluster {
	t.Helper()
	bin := natsServer(t)
	shipped, err := os.ReadFile(natstest.ShippedConfig(t))
	if err != nil {
		t.Fatal(err)
	}
	storeDir := regexp.MustCompile(`(?m)^(\s*store_dir:).*$`)
	if !storeDir.Match(shipped) {
		t.Fatal("deploy/nats/nats.conf has no store_dir line")
	}
	const routePassword = "route-test-password"
	var routes []string
	routePorts := make([]int, n)
	cl := &natsCluster{}
	for i := range n {
		routePorts[i] = portOf(t, freeAddr(t))
		routes = append(routes, fmt.Sprintf("\"nats-route://route:%s@127.0.0.1:%d\"", routePassword, routePorts[i]))
	}
	dir := t.TempDir()
	for i := range n {
		node := &clusterNode{name: fmt.Sprintf("c%d", i+1), port: portOf(t, freeAddr(t)), monitor: portOf(t, freeAddr(t)),
			log: &bytes.Buffer{}, mu: &sync.Mutex{}, bin: bin}
		node.conf = filepath.Join(dir, node.name+".conf")
		conf := storeDir.ReplaceAll(shipped, []byte(`$1 "`+filepath.Join(dir, node.name+"-store")+`"`))
		conf = fmt.Appendf(conf, "\ncluster {\n  name: drover-test\n  listen: 127.0.0.1:%d\n  authorization { user: route, password: %q }\n  routes: [\n    %s\n  ]\n}\n",
			routePorts[i], routePassword, strings.Join(routes, "\n    "))
		if err := os.WriteFile(node.conf, conf, 0o600); err != nil {
			t.Fatal(err)
		}
		cl.nodes = append(cl.nodes, node)
	}
	for _, node := range cl.nodes {
		node.start(t)
	}
	for _, node := range cl.nodes {
		node.waitReady(t)
	}
	t.Cleanup(func() {
		for _, node := range cl.nodes {
			node.stop()
		}
		if t.Failed() {
			for _, node := range cl.nodes {
				node.mu.Lock()
				t.Logf("--- nats-server %s log:\n%s", node.name, tail(node.log.String(), 2000))
				node.mu.Unlock()
			}
		}
	})
	return cl
}

func portOf(t *testing.T, addr string) int {
	t.Helper()
	u, err := url.Parse("tcp://" + addr)
	if err != nil {
		t.Fatal(err)
	}
	var p int
	fmt.Sscan(u.Port(), &p)
	return p
}

// url is nats.url for the whole cluster.
func (c *natsCluster) url() string {
	var urls []string
	for _, n := range c.nodes {
		urls = append(urls, fmt.Sprintf("nats://127.0.0.1:%d", n.port))
	}
	return strings.Join(urls, ",")
}

func (c *natsCluster) node(t *testing.T, name string) *clusterNode {
	t.Helper()
	for _, n := range c.nodes {
		if n.name == name {
			return n
		}
	}
	t.Fatalf("no node named %q", name)
	return nil
}

// jetStream is a JetStream client as the aggregator's user, over the
// whole cluster.
func (c *natsCluster) jetStream(t *testing.T) jetstream.JetStream {
	t.Helper()
	nc, err := nats.Connect(c.url(), nats.UserInfo("aggregator", natstest.AggregatorPassword),
		nats.CustomInboxPrefix("_INBOX_drover_aggregator"), nats.MaxReconnects(-1), nats.ReconnectWait(100*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	return js
}

// kill SIGKILLs node under load, runs proven (which waits for the sign
// that the cluster noticed), and checks that every Drover connection that
// was on the node reconnected elsewhere, logging how long each was down.
func (c *natsCluster) kill(t *testing.T, node *clusterNode, services map[string]*proc, load *clusterLoad, proven func()) {
	t.Helper()
	conns := node.droverConns(t)
	before := map[string]int{}
	for name, p := range services {
		before[name] = reconnected(p)
	}
	done := load.completed()
	t0 := time.Now()
	node.kill9(t)
	proven()
	t.Logf("killed %s (%d Drover connections on it) with %d requests completed; the cluster noticed after %s",
		node.name, len(conns), done, time.Since(t0).Round(time.Millisecond))
	for _, conn := range conns {
		// "drover-proxy proxy-0 usage", "drover-aggregator agg"
		var svc string
		for name := range services {
			if strings.Contains(conn, " "+name) || (name == "aggregator" && strings.HasPrefix(conn, "drover-aggregator")) {
				svc = name
			}
		}
		if svc == "" {
			continue
		}
		p := services[svc]
		waitFor(t, 30*time.Second, fmt.Sprintf("%s to log its reconnection", conn), func() bool { return reconnected(p) > before[svc] })
	}
	for name, p := range services {
		if d := downFor(p); reconnected(p) > before[name] && len(d) > 0 {
			t.Logf("  %s reconnected; its connections' down times so far: %s", name, strings.Join(d, ", "))
		}
	}
}

func (n *clusterNode) start(t *testing.T) {
	t.Helper()
	n.cmd = exec.Command(n.bin, "-c", n.conf, "-a", "127.0.0.1", "-p", fmt.Sprint(n.port), "-m", fmt.Sprint(n.monitor), "-n", n.name)
	// The users' passwords are the server's only, as in compose.
	n.cmd.Env = append(os.Environ(), "DROVER_NATS_PROXY_PASSWORD="+natstest.ProxyPassword, "DROVER_NATS_AGGREGATOR_PASSWORD="+natstest.AggregatorPassword)
	n.cmd.Stdout = lockedWriter{n.mu, n.log}
	n.cmd.Stderr = lockedWriter{n.mu, n.log}
	if err := n.cmd.Start(); err != nil {
		t.Fatal(err)
	}
}

func (n *clusterNode) waitReady(t *testing.T) {
	t.Helper()
	waitFor(t, 30*time.Second, "nats-server "+n.name, func() bool {
		resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/healthz?js-enabled-only=true", n.monitor))
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == 200
	})
}

// kill9 is kill -9: no shutdown, no goodbye to the cluster.
func (n *clusterNode) kill9(t *testing.T) {
	t.Helper()
	if err := n.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	n.cmd.Wait() //nolint:errcheck // killed
}

func (c *natsCluster) restart(t *testing.T, n *clusterNode) {
	t.Helper()
	n.restarts++
	n.mu.Lock()
	fmt.Fprintf(n.log, "--- restart %d\n", n.restarts)
	n.mu.Unlock()
	n.start(t)
	n.waitReady(t)
}

func (n *clusterNode) stop() {
	if n.cmd != nil && n.cmd.ProcessState == nil {
		n.cmd.Process.Signal(syscall.SIGTERM)
		n.cmd.Wait()
	}
}

// droverConns names the Drover connections the node holds (its /connz).
func (n *clusterNode) droverConns(t *testing.T) []string {
	t.Helper()
	resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/connz?limit=1024", n.monitor))
	if err != nil {
		return nil
	}
	defer resp.Body.Close()
	var cz struct {
		Connections []struct {
			Name string `json:"name"`
		} `json:"connections"`
	}
	json.NewDecoder(resp.Body).Decode(&cz) //nolint:errcheck // none on a bad answer
	var out []string
	for _, c := range cz.Connections {
		if strings.HasPrefix(c.Name, "drover-") {
			out = append(out, c.Name)
		}
	}
	return out
}

var (
	// natsconn's line, and fleet sync's (it replaces natsconn's handler
	// on its connection).
	reconnectLine = regexp.MustCompile(`"msg":"(NATS reconnected|fleet sync reconnected)`)
	downForField  = regexp.MustCompile(`"msg":"NATS reconnected".*?"down_for":"([^"]+)"`)
)

// reconnected counts the reconnections a service logged.
func reconnected(p *proc) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(reconnectLine.FindAllStringIndex(p.log.String(), -1))
}

// downFor lists how long each reconnected connection was down, as the
// service logged it.
func downFor(p *proc) []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []string
	for _, m := range downForField.FindAllStringSubmatch(p.log.String(), -1) {
		out = append(out, m[1])
	}
	return out
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

// --- Load from the official Ollama Go client.

type bearerKey string

func (k bearerKey) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	if k != "" {
		r.Header.Set("Authorization", "Bearer "+string(k))
	}
	return http.DefaultTransport.RoundTrip(r)
}

func ollamaClient(base, key string) *api.Client {
	u, err := url.Parse(base)
	if err != nil {
		panic(err)
	}
	return api.NewClient(u, &http.Client{Transport: bearerKey(key), Timeout: 60 * time.Second})
}

type clientErr struct {
	at  time.Time
	err error
}

func (e clientErr) String() string { return e.at.Format(time.StampMilli) + " " + e.err.Error() }

// clusterLoad runs requests until stop, each to completion: what a client
// saw complete is summed per (model, key), failures are kept.
type clusterLoad struct {
	stopping atomic.Bool
	wg       sync.WaitGroup
	done     atomic.Int64

	mu   sync.Mutex // guards want, n and errs
	want map[key]tokens
	n    map[key]int64
	errs []clientErr
}

func startClusterLoad(t *testing.T, bases []string) *clusterLoad {
	l := &clusterLoad{want: map[key]tokens{}, n: map[key]int64{}}
	keys := map[string]string{"team-a": "key-aaaaaaaa", "team-b": "key-bbbbbbbb"}
	noStream := false
	for w := range 12 {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			for i := w; !l.stopping.Load(); i += 12 {
				id := []string{"team-a", "team-b"}[i%2]
				c := ollamaClient(bases[(i/2)%len(bases)], keys[id])
				var m api.Metrics
				var model string
				var err error
				if i%3 == 0 {
					model = "tiny2"
					err = c.Generate(context.Background(), &api.GenerateRequest{Model: model, Prompt: "say something", Stream: &noStream},
						func(r api.GenerateResponse) error {
							if r.Done {
								m = r.Metrics
							}
							return nil
						})
				} else {
					model = "tiny"
					err = c.Chat(context.Background(), &api.ChatRequest{Model: model, Messages: []api.Message{{Role: "user", Content: "hello there"}}},
						func(r api.ChatResponse) error {
							if r.Done {
								m = r.Metrics
							}
							return nil
						})
				}
				if err == nil && m.EvalCount == 0 {
					err = fmt.Errorf("%s: the answer ended without its final counts", model)
				}
				l.mu.Lock()
				if err != nil {
					l.errs = append(l.errs, clientErr{time.Now(), err})
				} else {
					k := key{model, id}
					w := l.want[k]
					w.in += int64(m.PromptEvalCount)
					w.out += int64(m.EvalCount)
					l.want[k] = w
					l.n[k]++
					l.done.Add(1)
				}
				l.mu.Unlock()
			}
		}()
	}
	t.Cleanup(l.stop)
	return l
}

func (l *clusterLoad) completed() int64 { return l.done.Load() }

func (l *clusterLoad) waitCompleted(t *testing.T, n int64) {
	t.Helper()
	waitFor(t, 2*time.Minute, fmt.Sprintf("%d requests completed", n), func() bool { return l.completed() >= n })
}

// stop lets every request in flight finish and starts no more.
func (l *clusterLoad) stop() {
	l.stopping.Store(true)
	l.wg.Wait()
}

func (l *clusterLoad) errors() []clientErr {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.errs)
}

// checkClickHouseHolds waits until ClickHouse's per-minute rollup holds,
// per model and key, exactly the requests and tokens the clients saw
// complete.
func checkClickHouseHolds(t *testing.T, addr string, l *clusterLoad) {
	t.Helper()
	db, err := clickhouse.Open(&clickhouse.Options{Addr: []string{addr}, Auth: clickhouse.Auth{Database: "drover", Username: "default"}})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	type row struct {
		tokens
		requests int64
	}
	want := map[key]row{}
	l.mu.Lock()
	for k, tk := range l.want {
		want[k] = row{tk, l.n[k]}
	}
	l.mu.Unlock()
	var got map[key]row
	deadline := time.Now().Add(90 * time.Second)
	for {
		got = map[key]row{}
		rows, err := db.Query(t.Context(), "SELECT model, api_key, sum(input_tokens), sum(output_tokens), sum(requests) FROM token_usage_minute GROUP BY model, api_key")
		if err == nil {
			for rows.Next() {
				var model, apiKey string
				var in, out, n uint64
				if rows.Scan(&model, &apiKey, &in, &out, &n) == nil {
					got[key{model, apiKey}] = row{tokens{int64(in), int64(out)}, int64(n)}
				}
			}
			rows.Close()
		}
		if maps.Equal(got, want) || time.Now().After(deadline) {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	for k, w := range want {
		if got[k] != w {
			t.Errorf("model %s key %s: ClickHouse %d requests %d/%d tokens, clients saw %d requests %d/%d", k.model, k.apiKey,
				got[k].requests, got[k].in, got[k].out, w.requests, w.in, w.out)
		}
	}
	for k := range got {
		if _, ok := want[k]; !ok {
			t.Errorf("ClickHouse holds usage for model %s key %s, which no client saw complete", k.model, k.apiKey)
		}
	}
}
