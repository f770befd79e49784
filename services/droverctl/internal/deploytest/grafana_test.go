package deploytest

import (
	"context"
	"encoding/json"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
	"gopkg.in/yaml.v3"

	"github.com/droverhq/drover/pkg/chstore"
	"github.com/droverhq/drover/pkg/usage"
	"github.com/droverhq/drover/testkit/chtest"
)

const pluginID = "grafana-clickhouse-datasource"

type dashboard struct {
	UID        string `json:"uid"`
	Title      string `json:"title"`
	Templating struct {
		List []struct {
			Name       string     `json:"name"`
			Query      string     `json:"query"`
			Datasource datasource `json:"datasource"`
		} `json:"list"`
	} `json:"templating"`
	Panels []panel `json:"panels"`
}

type panel struct {
	ID         int        `json:"id"`
	Title      string     `json:"title"`
	Type       string     `json:"type"`
	Datasource datasource `json:"datasource"`
	Targets    []struct {
		RefID      string     `json:"refId"`
		RawSQL     string     `json:"rawSql"`
		Format     *int       `json:"format"`
		Datasource datasource `json:"datasource"`
	} `json:"targets"`
}

type datasource struct {
	Type string `json:"type"`
	UID  string `json:"uid"`
}

// TestGrafanaProvisioning checks that the data source, the dashboard
// provider and the dashboard fit together and that compose installs the
// plugin and mounts them where Grafana looks.
func TestGrafanaProvisioning(t *testing.T) {
	root := repoRoot(t)
	p := loadCompose(t, root, "grafana")
	g, err := p.GetService("grafana")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(env(g)["GF_INSTALL_PLUGINS"], pluginID) {
		t.Errorf("grafana does not install %s", pluginID)
	}
	mounts := map[string]string{} // target -> source
	for _, v := range g.Volumes {
		mounts[v.Target] = v.Source
	}
	prov := mounts["/etc/grafana/provisioning"]
	if prov == "" {
		t.Fatal("grafana does not mount /etc/grafana/provisioning")
	}

	var ds struct {
		Datasources []struct {
			Name, Type, UID string
			JSONData        map[string]any    `yaml:"jsonData"`
			SecureJSONData  map[string]string `yaml:"secureJsonData"`
		}
	}
	if err := yaml.Unmarshal([]byte(readFile(t, filepath.Join(prov, "datasources", "clickhouse.yaml"))), &ds); err != nil {
		t.Fatal(err)
	}
	if len(ds.Datasources) != 1 || ds.Datasources[0].Type != pluginID || ds.Datasources[0].UID == "" {
		t.Fatalf("datasources %+v: want one %s with a uid", ds.Datasources, pluginID)
	}
	src := ds.Datasources[0]
	if src.JSONData["host"] != "clickhouse" || src.JSONData["port"] != 9000 || src.JSONData["protocol"] != "native" || src.JSONData["defaultDatabase"] != "drover" {
		t.Errorf("data source points at %v, want clickhouse:9000 native, database drover", src.JSONData)
	}
	// Grafana reads as the read-only user; the password, ${VAR} in
	// provisioning files, comes from Grafana's environment and is the one
	// ClickHouse gives that user.
	if u := src.JSONData["username"]; u != "drover_reader" {
		t.Errorf("data source logs in as %v, want the read-only drover_reader", u)
	}
	ref := src.SecureJSONData["password"]
	name := strings.Trim(ref, "${}")
	if !strings.HasPrefix(ref, "${") || env(g)[name] == "" || env(g)[name] != composeSecrets[clickhousePasswordVar(t, root, "drover_reader")] {
		t.Errorf("data source password %q: want ${VAR} of drover_reader's password, set on the grafana service", ref)
	}

	var providers struct {
		Providers []struct {
			Options struct{ Path string }
		}
	}
	if err := yaml.Unmarshal([]byte(readFile(t, filepath.Join(prov, "dashboards", "drover.yaml"))), &providers); err != nil {
		t.Fatal(err)
	}
	if len(providers.Providers) != 1 || mounts[providers.Providers[0].Options.Path] == "" {
		t.Fatalf("dashboard provider %+v does not read a mounted directory", providers.Providers)
	}
	dir := mounts[providers.Providers[0].Options.Path]
	d := loadDashboard(t, filepath.Join(dir, "drover-token-usage.json"))
	if home := env(g)["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]; filepath.Dir(home) != providers.Providers[0].Options.Path {
		t.Errorf("home dashboard %s is not in the provisioned directory", home)
	}
	for _, panel := range d.Panels {
		for _, target := range panel.Targets {
			if target.Datasource.UID != src.UID || panel.Datasource.UID != src.UID {
				t.Errorf("panel %q uses data source %q, provisioned is %q", panel.Title, target.Datasource.UID, src.UID)
			}
		}
	}
}

func loadDashboard(t *testing.T, path string) dashboard {
	t.Helper()
	var d dashboard
	if err := json.Unmarshal([]byte(readFile(t, path)), &d); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	if d.UID == "" || d.Title == "" || len(d.Panels) == 0 {
		t.Fatalf("%s: want uid, title and panels", path)
	}
	ids := map[int]bool{}
	for _, p := range d.Panels {
		if ids[p.ID] {
			t.Errorf("panel id %d twice", p.ID)
		}
		ids[p.ID] = true
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		for _, target := range p.Targets {
			if !strings.Contains(target.RawSQL, "drover.token_usage_minute") || target.Format == nil {
				t.Errorf("panel %q: query must read drover.token_usage_minute and set a format", p.Title)
			}
		}
	}
	return d
}

// Grafana's macros and variables, replaced the way the plugin would for a
// window that holds the test rows and one selected value per variable.
var macros = []struct {
	re   *regexp.Regexp
	with string
}{
	{regexp.MustCompile(`\$__timeFilter\((\w+)\)`), "$1 >= now() - 86400 AND $1 <= now() + 60"},
	{regexp.MustCompile(`\$__timeInterval\((\w+)\)`), "toStartOfMinute($1)"},
	{regexp.MustCompile(`\$\{model:singlequote\}`), "'tiny'"},
	{regexp.MustCompile(`\$\{endpoint:singlequote\}`), "'gpu-a'"},
	{regexp.MustCompile(`\$\{api_key:singlequote\}`), "'team-a'"},
}

func expand(sql string) string {
	for _, m := range macros {
		sql = m.re.ReplaceAllString(sql, m.with)
	}
	return sql
}

// TestDashboardQueriesRun runs every query of the dashboard, macros
// expanded, against a real ClickHouse holding the migrated schema and a few
// events, so that a wrong column or table name fails here.
func TestDashboardQueriesRun(t *testing.T) {
	root := repoRoot(t)
	d := loadDashboard(t, filepath.Join(root, "deploy/grafana/dashboards/drover-token-usage.json"))
	srv := chtest.Start(t)
	ctx := context.Background()
	store, err := chstore.Open(chstore.Options{Addr: srv.Addr()})
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	if _, err := store.Migrate(ctx); err != nil {
		t.Fatal(err)
	}
	now := time.Now().UTC()
	var rows []chstore.EventRow
	for i, m := range []string{"tiny", "tiny", "other"} {
		rows = append(rows, chstore.EventRow{Seq: uint64(i + 1), Event: usage.Event{Schema: usage.SchemaVersion, ID: usage.NewID(),
			Time: now.Add(-time.Duration(i) * time.Minute), Endpoint: "gpu-a", Model: m, APIKey: "team-a", Status: 200,
			InputTokens: usage.Int64(10), OutputTokens: usage.Int64(5)}})
	}
	if err := store.InsertEvents(ctx, rows); err != nil {
		t.Fatal(err)
	}
	conn, err := clickhouse.Open(&clickhouse.Options{Addr: []string{srv.Addr()}})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()

	var queries []string
	for _, v := range d.Templating.List {
		queries = append(queries, v.Query)
	}
	for _, p := range d.Panels {
		for _, target := range p.Targets {
			queries = append(queries, target.RawSQL)
		}
	}
	for _, q := range queries {
		sql := expand(q)
		if strings.Contains(sql, "$") {
			t.Errorf("unexpanded macro or variable in %q", sql)
			continue
		}
		rs, err := conn.Query(ctx, sql)
		if err != nil {
			t.Errorf("%s\n  -> %v", sql, err)
			continue
		}
		n := 0
		for rs.Next() {
			n++
		}
		if err := rs.Err(); err != nil {
			t.Errorf("%s\n  -> %v", sql, err)
		}
		rs.Close()
		if n == 0 {
			t.Errorf("%s\n  -> no rows over data it should show", sql)
		}
	}

	// The headline number is the exact sum for the selection.
	i := slices.IndexFunc(d.Panels, func(p panel) bool {
		return p.Title == "Total tokens"
	})
	if i < 0 {
		t.Fatal("no Total tokens panel")
	}
	var total uint64
	if err := conn.QueryRow(ctx, expand(d.Panels[i].Targets[0].RawSQL)).Scan(&total); err != nil || total != 30 {
		t.Errorf("Total tokens for model tiny = %d (%v), want 30", total, err)
	}
}
