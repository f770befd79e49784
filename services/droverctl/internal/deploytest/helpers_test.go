package deploytest

import (
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/droverhq/drover/pkg/config"
)

// repoRoot is the directory holding go.work, found upwards from the test's
// working directory.
func repoRoot(t *testing.T) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.work")); err == nil {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatal("go.work not found above the test directory")
		}
		dir = parent
	}
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(raw)
}

// loadDroverEnv loads the DROVER_ variables of env the way the services do
// (no file, environment only), failing the test with pkg/config's message
// when a key does not exist or a value is wrong.
func loadDroverEnv(t *testing.T, where string, env map[string]string) *config.Config {
	t.Helper()
	var list []string
	var keys []string
	for k, v := range env {
		if strings.HasPrefix(k, config.EnvPrefix) {
			list = append(list, k+"="+v)
			keys = append(keys, k)
		}
	}
	if len(keys) == 0 {
		t.Fatalf("%s: sets no DROVER_ variables", where)
	}
	sort.Strings(keys)
	cfg, err := config.Load("", list)
	if err != nil {
		t.Fatalf("%s: its environment (%s) does not load: %v", where, strings.Join(keys, ", "), err)
	}
	return cfg
}
