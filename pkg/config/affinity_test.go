package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestAffinityFromFileAndEnvironment(t *testing.T) {
	path := filepath.Join(t.TempDir(), "drover.yaml")
	yaml := "backends: [{url: 'http://a:11434'}]\nrouting:\n  strategy: session\n  affinity:\n    share: false\n    load_bound: 3\n"
	if err := os.WriteFile(path, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := Load(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	if c.Routing.Strategy != StrategySession || c.Routing.Affinity.Sharing() || c.Routing.Affinity.LoadBound != 3 || c.Routing.Affinity.MaxEntries != 65536 {
		t.Fatalf("from the file: %+v", c.Routing)
	}
	c, err = Load(path, []string{"DROVER_ROUTING_STRATEGY=round_robin", "DROVER_ROUTING_AFFINITY_SHARE=true", "DROVER_ROUTING_AFFINITY_MAX_ENTRIES=100"})
	if err != nil {
		t.Fatal(err)
	}
	if c.Routing.Strategy != StrategyRoundRobin || !c.Routing.Affinity.Sharing() || c.Routing.Affinity.MaxEntries != 100 {
		t.Fatalf("from the environment: %+v", c.Routing)
	}
	c, err = Load("", []string{"DROVER_BACKENDS=http://a:11434"})
	if err != nil {
		t.Fatal(err)
	}
	if c.Routing.Strategy != StrategyPrefix || !c.Routing.Affinity.Sharing() {
		t.Fatalf("defaults: %+v", c.Routing)
	}
}

func TestAffinityErrorsNameTheKey(t *testing.T) {
	for env, key := range map[string]string{
		"DROVER_ROUTING_STRATEGY=sticky":                 "routing.strategy",
		"DROVER_ROUTING_AFFINITY_BLOCK_BYTES=100":        "routing.affinity.block_bytes",
		"DROVER_ROUTING_AFFINITY_LOAD_BOUND=-1":          "routing.affinity.load_bound",
		"DROVER_ROUTING_AFFINITY_LOAD_BOUND_TOKENS=-5":   "routing.affinity.load_bound_tokens",
		"DROVER_ROUTING_AFFINITY_MAX_ENTRIES=-1":         "routing.affinity.max_entries",
		"DROVER_ROUTING_AFFINITY_CONTEXT_TOKENS=-1":      "routing.affinity.context_tokens",
		"DROVER_ROUTING_AFFINITY_SHARE_INTERVAL=1us":     "routing.affinity.share_interval",
		"DROVER_ROUTING_AFFINITY_SLOT_SHARE_INTERVAL=1s": "routing.affinity.slot_share_interval",
		"DROVER_ROUTING_AFFINITY_SHARE=perhaps":          "DROVER_ROUTING_AFFINITY_SHARE",
	} {
		_, err := Load("", []string{"DROVER_BACKENDS=http://a:11434", env})
		if err == nil || !strings.Contains(err.Error(), key) {
			t.Errorf("%s: got %v, want an error naming %s", env, err, key)
		}
	}
}
