package deploytest

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/compose-spec/compose-go/v2/cli"
	"github.com/compose-spec/compose-go/v2/types"

	"github.com/droverhq/drover/pkg/config"
)

// composeSecrets is a .env as deploy/.env.example asks for: every secret
// set, each to a value of its own so that a test can tell which one a
// service got.
var composeSecrets = map[string]string{
	"DROVER_ADMIN_KEY":                "test-admin-key-0123456789",
	"DROVER_NATS_PROXY_PASSWORD":      "test-nats-proxy-password",
	"DROVER_NATS_AGGREGATOR_PASSWORD": "test-nats-aggregator-password",
	"CLICKHOUSE_READER_PASSWORD":      "test-clickhouse-reader-password",
	"CLICKHOUSE_WRITER_PASSWORD":      "test-clickhouse-writer-password",
	"GRAFANA_ADMIN_PASSWORD":          "test-grafana-admin-password",
}

// loadCompose parses docker-compose.yml as `docker compose` would, with the
// given profiles and only composeSecrets in the environment (every other
// ${VAR:-default} takes its default), normalised and with paths resolved
// against the repository root.
func loadCompose(t *testing.T, root string, profiles ...string) *types.Project {
	t.Helper()
	p, err := loadComposeEnv(root, composeSecrets, profiles...)
	if err != nil {
		t.Fatalf("docker-compose.yml: %v", err)
	}
	return p
}

func loadComposeEnv(root string, env map[string]string, profiles ...string) (*types.Project, error) {
	var list []string
	for k, v := range env {
		list = append(list, k+"="+v)
	}
	opts, err := cli.NewProjectOptions([]string{filepath.Join(root, "docker-compose.yml")},
		cli.WithWorkingDirectory(root), cli.WithProfiles(profiles), cli.WithResolvedPaths(true),
		cli.WithEnv(list), cli.WithInterpolation(true), cli.WithNormalization(true), cli.WithConsistency(true))
	if err != nil {
		return nil, err
	}
	return opts.LoadProject(context.Background())
}

func TestComposeServices(t *testing.T) {
	root := repoRoot(t)
	def := loadCompose(t, root)
	want := []string{"aggregator", "clickhouse", "lb", "nats", "proxy"}
	if got := def.ServiceNames(); !slices.Equal(got, want) {
		t.Errorf("`docker compose up` starts %v, want %v", got, want)
	}
	all := loadCompose(t, root, "grafana", "ollama")
	for _, name := range []string{"grafana", "ollama"} {
		if _, err := all.GetService(name); err != nil {
			t.Errorf("profile %s: %v", name, err)
		}
	}

	for name, svc := range all.Services {
		t.Run(name, func(t *testing.T) {
			if svc.HealthCheck == nil || svc.HealthCheck.Disable || len(svc.HealthCheck.Test) < 2 {
				t.Errorf("no health check")
			}
			if svc.Restart == "" {
				t.Errorf("no restart policy")
			}
			if svc.Build != nil {
				if _, err := os.Stat(filepath.Join(svc.Build.Context, "go.work")); err != nil {
					t.Errorf("build context %s is not the repository root (go.work)", svc.Build.Context)
				}
				if _, err := os.Stat(filepath.Join(svc.Build.Context, svc.Build.Dockerfile)); err != nil {
					t.Errorf("dockerfile: %v", err)
				}
			} else {
				image, tag, _ := strings.Cut(svc.Image, ":")
				if tag == "" || (tag == "latest" && image != "ollama/ollama") {
					t.Errorf("image %q: pin a version", svc.Image)
				}
			}
			for dep, d := range svc.DependsOn {
				other, err := all.GetService(dep)
				if err != nil {
					t.Errorf("depends on %s: %v", dep, err)
					continue
				}
				if d.Condition != types.ServiceConditionHealthy {
					t.Errorf("depends on %s with condition %q: want service_healthy so that `up` waits", dep, d.Condition)
				}
				if other.HealthCheck == nil {
					t.Errorf("depends on %s being healthy, which has no health check", dep)
				}
			}
			for _, v := range svc.Volumes {
				switch v.Type {
				case types.VolumeTypeBind:
					if _, err := os.Stat(v.Source); err != nil {
						t.Errorf("bind mount: %v", err)
					}
					if !v.ReadOnly {
						t.Errorf("bind mount %s should be read-only", v.Source)
					}
				case types.VolumeTypeVolume:
					if v.Source != "" {
						if _, ok := all.Volumes[v.Source]; !ok {
							t.Errorf("volume %s is not declared", v.Source)
						}
					}
				}
			}
		})
	}

	stateful := map[string]string{"nats": "/data", "clickhouse": "/var/lib/clickhouse", "grafana": "/var/lib/grafana"}
	for name, target := range stateful {
		svc, _ := all.GetService(name)
		if !slices.ContainsFunc(svc.Volumes, func(v types.ServiceVolumeConfig) bool {
			return v.Type == types.VolumeTypeVolume && v.Source != "" && v.Target == target
		}) {
			t.Errorf("%s: no named volume at %s", name, target)
		}
	}
}

func env(svc types.ServiceConfig) map[string]string {
	out := map[string]string{}
	for k, v := range svc.Environment {
		if v != nil {
			out[k] = *v
		}
	}
	return out
}

func TestComposeDroverServices(t *testing.T) {
	root := repoRoot(t)
	p := loadCompose(t, root)
	proxy, _ := p.GetService("proxy")
	agg, _ := p.GetService("aggregator")
	lb, _ := p.GetService("lb")
	nats, _ := p.GetService("nats")

	// Every DROVER_ variable is a real key with a valid value.
	proxyCfg := loadDroverEnv(t, "proxy", env(proxy))
	aggCfg := loadDroverEnv(t, "aggregator", env(agg))

	// The proxy scales: no fixed host port; only the load balancer publishes.
	if len(proxy.Ports) != 0 {
		t.Errorf("proxy publishes %v: `--scale proxy=3` needs no fixed host port", proxy.Ports)
	}
	_, port, _ := net.SplitHostPort(proxyCfg.Listen)
	if !slices.Contains([]string(proxy.Expose), port) {
		t.Errorf("proxy listens on %s but exposes %v", proxyCfg.Listen, proxy.Expose)
	}
	if len(lb.Ports) != 1 || lb.Ports[0].Target != 12434 || lb.Ports[0].Published != "12434" {
		t.Errorf("lb ports %+v: want 12434:12434, the port clients use", lb.Ports)
	}
	if proxy.StopGracePeriod == nil || time.Duration(*proxy.StopGracePeriod) < 50*time.Second {
		t.Errorf("proxy stop_grace_period %v: draining takes up to 30s and the usage publisher up to 20s more", proxy.StopGracePeriod)
	}
	if !strings.Contains(strings.Join(proxy.HealthCheck.Test, " "), ":"+port+"/") {
		t.Errorf("proxy health check %v does not probe its port %s", proxy.HealthCheck.Test, port)
	}
	_, aggPort, _ := net.SplitHostPort(aggCfg.Aggregator.MetricsListen)
	if !strings.Contains(strings.Join(agg.HealthCheck.Test, " "), ":"+aggPort+"/health") {
		t.Errorf("aggregator health check %v does not probe aggregator.metrics_listen %s", agg.HealthCheck.Test, aggCfg.Aggregator.MetricsListen)
	}

	// Both reach NATS and ClickHouse by service name and the ports those
	// servers listen on.
	natsConf := readFile(t, filepath.Join(root, "deploy/nats/nats.conf"))
	natsPort := regexp.MustCompile(`(?m)^port:\s*(\d+)`).FindStringSubmatch(natsConf)
	if natsPort == nil || !regexp.MustCompile(`(?m)^jetstream\s*\{`).MatchString(natsConf) {
		t.Fatalf("deploy/nats/nats.conf: want port and a jetstream block")
	}
	store := regexp.MustCompile(`store_dir:\s*(\S+)`).FindStringSubmatch(natsConf)
	if store == nil || !slices.ContainsFunc(nats.Volumes, func(v types.ServiceVolumeConfig) bool {
		return v.Type == types.VolumeTypeVolume && strings.HasPrefix(store[1], v.Target)
	}) {
		t.Errorf("JetStream store_dir %v is not on a volume", store)
	}
	httpPort := regexp.MustCompile(`(?m)^http_port:\s*(\d+)`).FindStringSubmatch(natsConf)
	if httpPort == nil || !strings.Contains(strings.Join(nats.HealthCheck.Test, " "), ":"+httpPort[1]+"/healthz") {
		t.Errorf("nats health check %v does not ask the monitoring port", nats.HealthCheck.Test)
	}
	// Each logs in as its own NATS user (deploy/nats/nats.conf) and
	// ClickHouse user (deploy/clickhouse/users.d/drover.xml), with the
	// password the server got.
	ch, _ := p.GetService("clickhouse")
	chEnv, natsEnv := env(ch), env(nats)
	for _, c := range []struct {
		name     string
		cfg      *config.Config
		natsUser string
		chUser   string
	}{
		{"proxy", proxyCfg, "proxy", "drover_reader"},
		{"aggregator", aggCfg, "aggregator", "drover_writer"},
	} {
		if c.cfg.NATS.URL != "nats://nats:"+natsPort[1] {
			t.Errorf("%s: nats.url %q, want nats://nats:%s", c.name, c.cfg.NATS.URL, natsPort[1])
		}
		if c.cfg.ClickHouse.Addr != "clickhouse:9000" {
			t.Errorf("%s: clickhouse.addr %q, want the native port clickhouse:9000", c.name, c.cfg.ClickHouse.Addr)
		}
		passVar := natsPasswordVar(t, natsConf, c.natsUser)
		if c.cfg.NATS.User != c.natsUser || c.cfg.NATS.Password.Reveal() == "" || c.cfg.NATS.Password.Reveal() != natsEnv[passVar] {
			t.Errorf("%s: NATS user %q with the password nats-server reads from %s, want user %q", c.name, c.cfg.NATS.User, passVar, c.natsUser)
		}
		chVar := clickhousePasswordVar(t, root, c.chUser)
		if c.cfg.ClickHouse.Username != c.chUser || c.cfg.ClickHouse.Password.Reveal() == "" || c.cfg.ClickHouse.Password.Reveal() != chEnv[chVar] {
			t.Errorf("%s: ClickHouse user %q with the password clickhouse-server reads from %s, want user %q", c.name, c.cfg.ClickHouse.Username, chVar, c.chUser)
		}
	}

	// The proxies start keyed, with one admin key: the operator's.
	if len(proxyCfg.Auth.Keys) != 1 || proxyCfg.Auth.Keys[0].Role != "admin" || proxyCfg.Auth.Keys[0].Key.Reveal() != composeSecrets["DROVER_ADMIN_KEY"] {
		t.Errorf("proxy auth.keys %+v: want one admin key, DROVER_ADMIN_KEY", proxyCfg.Auth.Keys)
	}
	if proxyCfg.Auth.Open {
		t.Error("proxy: auth.open is set")
	}
	// /metrics on its own port, exposed on the network but not published.
	_, mport, err := net.SplitHostPort(proxyCfg.MetricsListen)
	if err != nil || !slices.Contains([]string(proxy.Expose), mport) {
		t.Errorf("proxy metrics_listen %q: want a port of its own among expose %v", proxyCfg.MetricsListen, proxy.Expose)
	}
	if aggCfg.ClickHouse.Database != "drover" {
		t.Errorf("aggregator database %q", aggCfg.ClickHouse.Database)
	}
}

// TestComposeLoadBalancer reads deploy/nginx/nginx.conf for what keeps
// streams streaming across scaled replicas.
func TestComposeLoadBalancer(t *testing.T) {
	root := repoRoot(t)
	p := loadCompose(t, root)
	lb, _ := p.GetService("lb")
	var conf string
	for _, v := range lb.Volumes {
		if v.Target == "/etc/nginx/nginx.conf" {
			conf = readFile(t, v.Source)
		}
	}
	if conf == "" {
		t.Fatal("lb does not mount an nginx.conf")
	}
	for _, want := range []string{
		"resolver 127.0.0.11",        // Docker's DNS: every replica of the proxy service
		"server proxy:12434 resolve", // re-resolved as replicas come and go
		"zone ",                      // resolve needs a shared zone
		"proxy_buffering off",        // NDJSON / SSE chunk by chunk
		"proxy_http_version 1.1",
		"proxy_read_timeout 1h",
		"proxy_next_upstream error timeout",
		"listen 12434",
		"client_max_body_size 0",
	} {
		if !strings.Contains(conf, want) {
			t.Errorf("nginx.conf lacks %q", want)
		}
	}
	if strings.Contains(conf, "non_idempotent") {
		t.Error("nginx.conf must not re-send POSTs a replica may have started")
	}
}
