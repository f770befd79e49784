package deploytest

import (
	"encoding/xml"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"

	"github.com/compose-spec/compose-go/v2/types"
	"gopkg.in/yaml.v3"
)

// natsPasswordVar is the environment variable nats.conf reads the user's
// password from ($VAR), failing the test when the user has none or a
// literal password.
func natsPasswordVar(t *testing.T, natsConf, user string) string {
	t.Helper()
	m := regexp.MustCompile(`(?s)user:\s*` + regexp.QuoteMeta(user) + `\s+password:\s*(\S+)`).FindStringSubmatch(natsConf)
	if m == nil {
		t.Fatalf("deploy/nats/nats.conf: no user %s with a password", user)
	}
	if !regexp.MustCompile(`^\$[A-Z_][A-Z0-9_]*$`).MatchString(m[1]) {
		t.Fatalf("deploy/nats/nats.conf: user %s's password is %q, want $VARIABLE from the environment", user, m[1])
	}
	return strings.TrimPrefix(m[1], "$")
}

// natsConfVars is every $VARIABLE nats.conf reads from the environment.
func natsConfVars(natsConf string) []string {
	var out []string
	for _, m := range regexp.MustCompile(`(?m)^[^#\n]*[:=]\s*\$([A-Z_][A-Z0-9_]*)\s*(#.*)?$`).FindAllStringSubmatch(natsConf, -1) {
		if !slices.Contains(out, m[1]) {
			out = append(out, m[1])
		}
	}
	return out
}

// clickhouseUsers maps each user of the shipped users file to the
// environment variable its password comes from (empty for none).
func clickhouseUsers(t *testing.T, root string) map[string]string {
	t.Helper()
	var f struct {
		Users struct {
			Users []struct {
				XMLName  xml.Name
				Password *struct {
					FromEnv string `xml:"from_env,attr"`
				} `xml:"password"`
			} `xml:",any"`
		} `xml:"users"`
	}
	if err := xml.Unmarshal([]byte(readFile(t, filepath.Join(root, usersFile))), &f); err != nil {
		t.Fatalf("%s: %v", usersFile, err)
	}
	out := map[string]string{}
	for _, u := range f.Users.Users {
		out[u.XMLName.Local] = ""
		if u.Password != nil {
			out[u.XMLName.Local] = u.Password.FromEnv
		}
	}
	return out
}

func clickhousePasswordVar(t *testing.T, root, user string) string {
	t.Helper()
	v := clickhouseUsers(t, root)[user]
	if v == "" {
		t.Fatalf("%s: no user %s with a password from_env", usersFile, user)
	}
	return v
}

// TestComposeRefusesWithoutSecrets: every secret is ${VAR:?...}, so
// `docker compose` stops with a message naming the variable when one is
// unset or empty, instead of starting with no password or a default one.
func TestComposeRefusesWithoutSecrets(t *testing.T) {
	root := repoRoot(t)
	var names []string
	for k := range composeSecrets {
		names = append(names, k)
	}
	sort.Strings(names)
	for _, name := range names {
		for _, val := range []string{"unset", ""} {
			env := map[string]string{}
			for k, v := range composeSecrets {
				env[k] = v
			}
			if val == "unset" {
				delete(env, name)
			} else {
				env[name] = val
			}
			_, err := loadComposeEnv(root, env, "grafana", "ollama")
			if err == nil || !strings.Contains(err.Error(), name) {
				t.Errorf("%s %s: compose loads (%v), want it refused naming %s", name, val, err, name)
			} else if !strings.Contains(err.Error(), ".env") {
				t.Errorf("%s: %v: the message should say how to set it", name, err)
			}
		}
	}
	// Every secret the file reads is one of those, and deploy/.env.example
	// lists each, empty.
	raw := readFile(t, filepath.Join(root, "docker-compose.yml"))
	example := readFile(t, filepath.Join(root, "deploy/.env.example"))
	for _, m := range regexp.MustCompile(`\$\{([A-Z0-9_]+):\?`).FindAllStringSubmatch(raw, -1) {
		if _, ok := composeSecrets[m[1]]; !ok {
			t.Errorf("docker-compose.yml requires %s, which the tests' .env (composeSecrets) lacks", m[1])
		}
		if !regexp.MustCompile(`(?m)^` + m[1] + `=$`).MatchString(example) {
			t.Errorf("deploy/.env.example: want a line %s= (empty: no example secret to copy)", m[1])
		}
	}
}

// secretName is what a setting holding a secret is called.
var secretName = regexp.MustCompile(`(?i)(password|secret|token|(^|_)keys?$)`)

// TestComposeSecretsFromEnvironment reads docker-compose.yml as written
// (before interpolation): every secret-looking variable a service gets is
// ${VAR:?...}, never a literal or a ${VAR:-default}.
func TestComposeSecretsFromEnvironment(t *testing.T) {
	root := repoRoot(t)
	var file map[string]any
	if err := yaml.Unmarshal([]byte(readFile(t, filepath.Join(root, "docker-compose.yml"))), &file); err != nil {
		t.Fatal(err)
	}
	envs := map[string]map[string]any{}
	if anchor, ok := file["x-drover-env"].(map[string]any); ok {
		envs["x-drover-env"] = anchor
	}
	for name, svc := range file["services"].(map[string]any) {
		if e, ok := svc.(map[string]any)["environment"].(map[string]any); ok {
			envs[name] = e
		}
	}
	required := regexp.MustCompile(`\$\{[A-Z0-9_]+:\?[^}]+\}`)
	checked := 0
	for where, e := range envs {
		for k, v := range e {
			s, _ := v.(string)
			if !secretName.MatchString(k) {
				continue
			}
			checked++
			if !required.MatchString(s) || strings.Contains(s, ":-") {
				t.Errorf("%s: %s = %q: a secret must be ${VAR:?how to set it}", where, k, s)
			}
		}
	}
	if checked < 8 {
		t.Errorf("checked %d secret variables; the file has more (names changed?)", checked)
	}
}

// TestComposeLockedDown: only the load balancer (and Grafana, when asked
// for) publish ports; NATS runs with the shipped config and its users'
// passwords; ClickHouse with the shipped users and theirs.
func TestComposeLockedDown(t *testing.T) {
	root := repoRoot(t)
	p := loadCompose(t, root, "grafana", "ollama")
	for name, svc := range p.Services {
		if len(svc.Ports) > 0 && name != "lb" && name != "grafana" {
			t.Errorf("%s publishes %v: only lb (and grafana) may", name, svc.Ports)
		}
	}

	nats, _ := p.GetService("nats")
	natsConf := readFile(t, filepath.Join(root, "deploy/nats/nats.conf"))
	i := slices.Index(nats.Command, "--config")
	if i < 0 || i+1 >= len(nats.Command) {
		t.Fatalf("nats command %v: want --config FILE", nats.Command)
	}
	if !slices.ContainsFunc(nats.Volumes, func(v types.ServiceVolumeConfig) bool {
		return v.Target == nats.Command[i+1] && v.Source == filepath.Join(root, "deploy/nats/nats.conf")
	}) {
		t.Errorf("nats reads %s, which is not deploy/nats/nats.conf mounted", nats.Command[i+1])
	}
	if !regexp.MustCompile(`(?m)^authorization\s*\{`).MatchString(natsConf) || strings.Contains(natsConf, "no_auth_user") {
		t.Error("deploy/nats/nats.conf: want an authorization block and no no_auth_user (no anonymous access)")
	}
	vars := natsConfVars(natsConf)
	if len(vars) < 2 {
		t.Errorf("deploy/nats/nats.conf reads %v from the environment, want both users' passwords", vars)
	}
	for _, v := range vars {
		if env(nats)[v] == "" || env(nats)[v] != composeSecrets[v] {
			t.Errorf("nats.conf reads $%s, which the nats service does not get from .env", v)
		}
	}

	ch, _ := p.GetService("clickhouse")
	if !slices.ContainsFunc(ch.Volumes, func(v types.ServiceVolumeConfig) bool {
		return v.Source == filepath.Join(root, usersFile) && strings.HasPrefix(v.Target, "/etc/clickhouse-server/users.d/")
	}) {
		t.Errorf("clickhouse does not mount %s into /etc/clickhouse-server/users.d/", usersFile)
	}
	for user, v := range clickhouseUsers(t, root) {
		if v != "" && (env(ch)[v] == "" || env(ch)[v] != composeSecrets[v]) {
			t.Errorf("ClickHouse user %s's password comes from %s, which the clickhouse service does not get from .env", user, v)
		}
	}
	for _, k := range []string{"CLICKHOUSE_USER", "CLICKHOUSE_PASSWORD"} {
		if _, ok := env(ch)[k]; ok {
			t.Errorf("clickhouse sets %s: the image would replace the default user with it; users come from %s", k, usersFile)
		}
	}
}

// shippedConfigs are the files deployments use as they are.
func shippedConfigs(t *testing.T, root string) []string {
	t.Helper()
	files := []string{"docker-compose.yml", "deploy/nats/nats.conf"}
	for _, pattern := range []string{"deploy/k8s/*.yaml", "deploy/clickhouse/*/*.xml", "deploy/grafana/provisioning/*/*.yaml"} {
		m, err := filepath.Glob(filepath.Join(root, pattern))
		if err != nil {
			t.Fatal(err)
		}
		for _, f := range m {
			rel, _ := filepath.Rel(root, f)
			files = append(files, rel)
		}
	}
	return files
}

// TestNoDefaultPasswords: no shipped file holds a password, key or secret
// value. Secrets are references: ${VAR:?...} (compose), $VAR (nats.conf),
// from_env (ClickHouse), ${VAR} (Grafana), secretKeyRef or $(VAR) (k8s);
// the example Secret's values are empty.
func TestNoDefaultPasswords(t *testing.T) {
	root := repoRoot(t)
	reference := regexp.MustCompile(`^$|\$\{[A-Z0-9_]+(:\?[^}]*)?\}|\$\([A-Z0-9_]+\)|^\$[A-Z0-9_]+$`)
	known := regexp.MustCompile(`(?i)change-?me|changeme|:-drover|password123|\bhunter2\b|demo-key|smoke-key`)
	for _, rel := range shippedConfigs(t, root) {
		text := readFile(t, filepath.Join(root, rel))
		if m := known.FindString(text); m != "" {
			t.Errorf("%s: holds %q, a known default secret", rel, m)
		}
		switch filepath.Ext(rel) {
		case ".yml", ".yaml":
			for _, doc := range strings.Split(text, "\n---") {
				var node yaml.Node
				if err := yaml.Unmarshal([]byte(doc), &node); err != nil {
					t.Fatalf("%s: %v", rel, err)
				}
				walkSecrets(&node, "", func(key, val string) {
					if !reference.MatchString(val) {
						t.Errorf("%s: %s = %q: a secret must be a reference, not a value", rel, key, val)
					}
				})
			}
		case ".xml":
			if m := regexp.MustCompile(`<password(_sha256_hex|_double_sha1_hex)?>[^<]+<`).FindString(text); m != "" {
				t.Errorf("%s: %s: passwords come from_env", rel, m)
			}
		case ".conf":
			for _, m := range regexp.MustCompile(`(?m)^\s*(password|token|nkey)\s*[:=]\s*(\S+)`).FindAllStringSubmatch(text, -1) {
				if !reference.MatchString(m[2]) {
					t.Errorf("%s: %s %s: a secret must be $VARIABLE", rel, m[1], m[2])
				}
			}
		}
	}
}

// walkSecrets calls f for every scalar whose key, or whose Kubernetes env
// entry's name, looks like a secret. Mappings (secretKeyRef) are not
// values and are skipped.
func walkSecrets(n *yaml.Node, key string, f func(key, val string)) {
	switch n.Kind {
	case yaml.DocumentNode, yaml.SequenceNode:
		for _, c := range n.Content {
			walkSecrets(c, key, f)
		}
	case yaml.MappingNode:
		if key == "secretKeyRef" || key == "configMapKeyRef" {
			return // a reference: {name: Secret, key: entry}
		}
		name := ""
		for i := 0; i+1 < len(n.Content); i += 2 {
			if n.Content[i].Value == "name" {
				name = n.Content[i+1].Value
			}
		}
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i].Value, n.Content[i+1]
			if k == "value" && name != "" {
				k = name // a Kubernetes env entry: {name: X, value: Y}
			}
			if v.Kind == yaml.ScalarNode {
				if secretName.MatchString(k) && !strings.HasSuffix(k, "_FILE") {
					f(k, v.Value)
				}
				continue
			}
			walkSecrets(v, k, f)
		}
	}
}

func TestSecretNamePattern(t *testing.T) {
	for name, want := range map[string]bool{
		"DROVER_AUTH_KEYS": true, "DROVER_ADMIN_KEY": true, "password": true, "GF_SECURITY_ADMIN_PASSWORD": true,
		"admin-key": false, "key": true, "DROVER_LISTEN": false, "keys": true, "monkey": false, "DROVER_NATS_USER": false,
	} {
		if got := secretName.MatchString(name); got != want {
			t.Errorf("secretName(%q) = %v, want %v", name, got, want)
		}
	}
}
