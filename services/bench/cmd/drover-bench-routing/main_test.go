package main

import (
	"strings"
	"testing"
	"time"
)

func TestParseFlags(t *testing.T) {
	bins := []string{"-drover", "p", "-backend-bin", "b"}
	o, err := parseFlags(append(bins, "-quick", "-rates", "3", "-nats-bin", "n"))
	if err != nil {
		t.Fatal(err)
	}
	if len(o.setups) != 2 || o.setups[1].Strategy != "prefix" || len(o.spec.Steps) != 1 || o.spec.Steps[0].Rate != 3 ||
		o.spec.Steps[0].Duration != 2*time.Second || o.spec.Workload.Groups != 8 || o.spec.Warmup != 2*time.Second {
		t.Errorf("-quick with -rates 3: %+v %+v %+v", o.setups, o.spec.Steps, o.spec.Workload)
	}
	o, err = parseFlags(append(bins, "-setups", "1:prefix-noshare,1:session", "-max-entries", "7"))
	if err != nil {
		t.Fatal(err)
	}
	if s := o.setups[0]; s.Strategy != "prefix" || s.Share || s.MaxEntries != 7 || o.setups[1].Strategy != "session" {
		t.Errorf("setups %+v", o.setups)
	}
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"-setups", "1:fastest"}, "REPLICAS:STRATEGY"},
		{[]string{"-setups", "3:prefix"}, "needs -nats-bin"},
		{[]string{"-legacy", "-setups", "1:prefix"}, "only least_loaded"},
		{[]string{"-rates", "0"}, "-rates"},
		{[]string{"-multi-turn", "2"}, "multi-turn"},
	} {
		if _, err := parseFlags(append(bins, c.args...)); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%v: %v, want an error naming %q", c.args, err, c.want)
		}
	}
	if _, err := parseFlags(nil); err == nil || !strings.Contains(err.Error(), "-drover") {
		t.Errorf("no binaries: %v", err)
	}
	if o, err := parseFlags([]string{"-from", "x.json"}); err != nil || o.from != "x.json" {
		t.Errorf("-from needs no binaries: %v", err)
	}
}

func TestParseSweep(t *testing.T) {
	bins := []string{"-drover", "p", "-backend-bin", "b"}
	o, err := parseFlags(append(bins, "-sweep-groups", "8, 32,128"))
	if err != nil {
		t.Fatal(err)
	}
	if len(o.sweep) != 3 || o.sweep[1] != 32 || len(o.setups) != 2 || o.setups[0].Strategy != "least_loaded" || o.setups[1].Strategy != "prefix" {
		t.Errorf("sweep %v, setups %+v", o.sweep, o.setups)
	}
	if o, err = parseFlags(append(bins, "-sweep-groups", "8", "-setups", "1:prefix")); err != nil || len(o.setups) != 1 {
		t.Errorf("explicit setups in a sweep: %+v %v", o.setups, err)
	}
	if _, err := parseFlags(append(bins, "-sweep-groups", "8,0")); err == nil || !strings.Contains(err.Error(), "-sweep-groups") {
		t.Errorf("group count 0: %v", err)
	}
}
