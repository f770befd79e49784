package e2e

// A NATS cluster of real nats-server processes for the e2e tests: the
// shipped deploy/nats/nats.conf on every node (its users and permissions),
// a store per node, routes on loopback with a login of their own, and
// kill -9 and restart of any node.

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/droverhq/drover/testkit/natstest"
)

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
	// Registered before the nodes start, so that a node that never gets
	// ready is stopped too and its log shows why.
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
	for _, node := range cl.nodes {
		node.start(t)
	}
	for _, node := range cl.nodes {
		node.waitReady(t)
	}
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
	waitFor(t, 60*time.Second, "nats-server "+n.name, func() bool {
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
