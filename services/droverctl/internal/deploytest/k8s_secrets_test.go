package deploytest

import (
	"fmt"
	"net"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// workload returns the one container of a Deployment or StatefulSet.
func workload(t *testing.T, objs []object, name string) (object, container) {
	t.Helper()
	for _, kind := range []string{"Deployment", "StatefulSet"} {
		if o, ok := find(objs, kind, name); ok && len(o.Spec.Template.Spec.Containers) == 1 {
			return o, o.Spec.Template.Spec.Containers[0]
		}
	}
	t.Fatalf("no workload %s with one container", name)
	return object{}, container{}
}

// envSecret is the Secret key an env variable of c reads, "" when it does
// not read one.
func envSecret(c container, name string) string {
	for _, e := range c.Env {
		if e.Name == name {
			if r := secretKeyRef(e.ValueFrom); r != nil && r.name == "drover-secrets" {
				return r.key
			}
		}
	}
	return ""
}

func envValue(c container, name string) string {
	for _, e := range c.Env {
		if e.Name == name {
			return e.Value
		}
	}
	return ""
}

// mountedConfigMap is the ConfigMap mounted at dir (or at a file in it).
func mountedConfigMap(o object, c container, dir string) string {
	for _, m := range c.VolumeMounts {
		if m.MountPath != dir && path.Dir(m.MountPath) != dir {
			continue
		}
		for _, v := range o.Spec.Template.Spec.Volumes {
			if v.Name == m.Name && v.ConfigMap != nil {
				return v.ConfigMap.Name
			}
		}
	}
	return ""
}

// TestKubernetesLockedDown: the manifests ship no secret and read every
// password and the admin key from the drover-secrets Secret; NATS runs the
// shipped nats.conf and ClickHouse the shipped users, each refusing to start
// with an empty password; each service logs in as its own user.
func TestKubernetesLockedDown(t *testing.T) {
	root := repoRoot(t)
	shipped := loadManifests(t, root)
	for _, o := range shipped {
		if o.Kind == "Secret" {
			t.Errorf("kustomization ships Secret %s: secrets are created by the operator (secret.example.yaml)", o.Metadata.Name)
		}
		if o.Kind == "Service" {
			if typ, _ := o.raw["spec"].(map[string]any)["type"].(string); typ != "" && typ != "ClusterIP" {
				t.Errorf("Service %s is %s: nothing is exposed outside the cluster by default", o.Metadata.Name, typ)
			}
		}
	}
	example := exampleSecret(t, root)
	for k, v := range example.StringData {
		if v != "" {
			t.Errorf("secret.example.yaml: %s has a value; leave it empty (a copied example must not start)", k)
		}
	}
	objs := append(shipped, example)

	// Every secret-looking variable comes from the Secret, directly or by
	// $(VAR) of one that does; and every key of the example is used.
	used := map[string]bool{}
	for _, o := range shipped {
		for _, c := range o.Spec.Template.Spec.Containers {
			fromSecret := map[string]bool{}
			for _, e := range c.Env {
				if r := secretKeyRef(e.ValueFrom); r != nil {
					fromSecret[e.Name] = true
					used[r.key] = true
					continue
				}
				if !secretName.MatchString(e.Name) || strings.HasSuffix(e.Name, "_FILE") {
					continue
				}
				ok := false
				for name := range fromSecret {
					ok = ok || strings.Contains(e.Value, "$("+name+")")
				}
				if !ok {
					t.Errorf("%s/%s: %s = %q does not come from the Secret", o.Kind, o.Metadata.Name, e.Name, e.Value)
				}
			}
			for _, ef := range c.EnvFrom {
				if ef.SecretRef != nil {
					t.Errorf("%s/%s: envFrom a whole Secret: name each entry with secretKeyRef", o.Kind, o.Metadata.Name)
				}
			}
		}
	}
	for k := range example.StringData {
		if !used[k] {
			t.Errorf("secret.example.yaml: %s is read by no workload", k)
		}
	}

	// NATS: the shipped config, its passwords from the Secret, refused empty.
	natsConf := readFile(t, filepath.Join(root, "deploy/nats/nats.conf"))
	nats, natsC := workload(t, objs, "nats")
	cm, ok := find(objs, "ConfigMap", mountedConfigMap(nats, natsC, "/etc/nats"))
	if !ok || cm.Data["nats.conf"] != natsConf {
		t.Errorf("nats: /etc/nats/nats.conf is not deploy/nats/nats.conf (copy it into the nats-config ConfigMap)")
	}
	natsCmd := strings.Join(append(slices.Clone(natsC.Command), natsC.Args...), " ")
	if !strings.Contains(natsCmd, "--config /etc/nats/nats.conf") {
		t.Errorf("nats runs %q, not with --config /etc/nats/nats.conf", natsCmd)
	}
	for _, v := range natsConfVars(natsConf) {
		if envSecret(natsC, v) == "" || !strings.Contains(natsCmd, "${"+v+":?") {
			t.Errorf("nats: $%s (nats.conf) must come from the Secret and be refused when empty", v)
		}
	}

	// ClickHouse: the shipped users, their passwords from the Secret.
	ch, chC := workload(t, objs, "clickhouse")
	cm, ok = find(objs, "ConfigMap", mountedConfigMap(ch, chC, "/etc/clickhouse-server/users.d"))
	if !ok || cm.Data["drover.xml"] != readFile(t, filepath.Join(root, usersFile)) {
		t.Errorf("clickhouse: users.d/drover.xml is not %s (copy it into the clickhouse-users ConfigMap)", usersFile)
	}
	chCmd := strings.Join(append(slices.Clone(chC.Command), chC.Args...), " ")
	for user, v := range clickhouseUsers(t, root) {
		if v != "" && (envSecret(chC, v) == "" || !strings.Contains(chCmd, "${"+v+":?")) {
			t.Errorf("clickhouse: %s's password %s must come from the Secret and be refused when empty", user, v)
		}
	}

	// Each service as its own user, with the password that server has.
	for _, c := range []struct{ workload, natsUser, chUser string }{
		{"drover-proxy", "proxy", "drover_reader"},
		{"drover-aggregator", "aggregator", "drover_writer"},
	} {
		_, svc := workload(t, objs, c.workload)
		if envValue(svc, "DROVER_NATS_USER") != c.natsUser ||
			envSecret(svc, "DROVER_NATS_PASSWORD") != envSecret(natsC, natsPasswordVar(t, natsConf, c.natsUser)) {
			t.Errorf("%s: want NATS user %s with the password nats-server has", c.workload, c.natsUser)
		}
		if envValue(svc, "DROVER_CLICKHOUSE_USERNAME") != c.chUser ||
			envSecret(svc, "DROVER_CLICKHOUSE_PASSWORD") != envSecret(chC, clickhousePasswordVar(t, root, c.chUser)) {
			t.Errorf("%s: want ClickHouse user %s with the password clickhouse-server has", c.workload, c.chUser)
		}
	}

	// The proxy: keyed with the admin key, /metrics on its own port, which
	// is the one Prometheus is told to scrape.
	proxy, proxyC := workload(t, objs, "drover-proxy")
	env := containerEnv(t, objs, "drover-proxy", proxyC)
	if env["DROVER_AUTH_KEYS"] != "admin:from-admin-key:admin" {
		t.Errorf("proxy DROVER_AUTH_KEYS resolves to %q, want admin:<admin-key from the Secret>:admin", env["DROVER_AUTH_KEYS"])
	}
	_, mport, err := net.SplitHostPort(envValue(proxyC, "DROVER_METRICS_LISTEN"))
	annotations, _ := proxy.raw["spec"].(map[string]any)["template"].(map[string]any)["metadata"].(map[string]any)["annotations"].(map[string]any)
	if err != nil || !slices.ContainsFunc(proxyC.Ports, func(p containerPort) bool { return fmt.Sprint(p.ContainerPort) == mport }) ||
		fmt.Sprint(annotations["prometheus.io/port"]) != mport {
		t.Errorf("proxy: metrics_listen %q must be a container port and the prometheus.io/port annotation (%v)", envValue(proxyC, "DROVER_METRICS_LISTEN"), annotations["prometheus.io/port"])
	}
}
