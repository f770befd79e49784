package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"

	"github.com/droverhq/drover/pkg/apikey"
)

// limitField is one of a key's limits: its flag, its name in the API
// (and in --model-limit), and its short name in the keys list table.
type limitField struct {
	flag, json, short string
	get               func(apikey.Limits) int64
	left              func(remaining) *int64
}

var limitFields = []limitField{
	{"requests-per-minute", "requests_per_minute", "rpm",
		func(l apikey.Limits) int64 { return l.RequestsPerMinute }, func(r remaining) *int64 { return r.RequestsThisMinute }},
	{"tokens-per-minute", "tokens_per_minute", "tpm",
		func(l apikey.Limits) int64 { return l.TokensPerMinute }, func(r remaining) *int64 { return r.TokensThisMinute }},
	{"concurrent", "concurrent", "concurrent",
		func(l apikey.Limits) int64 { return l.Concurrent }, func(r remaining) *int64 { return r.Concurrent }},
	{"tokens-per-day", "tokens_per_day", "day",
		func(l apikey.Limits) int64 { return l.TokensPerDay }, func(r remaining) *int64 { return r.TokensToday }},
	{"tokens-per-month", "tokens_per_month", "month",
		func(l apikey.Limits) int64 { return l.TokensPerMonth }, func(r remaining) *int64 { return r.TokensThisMonth }},
}

// limitFlags are the flags of create and set that change a key's limits,
// weight and class.
type limitFlags struct {
	values map[string]*int64 // by API name
	models modelLimits
	weight *int
	class  *string
}

func addLimitFlags(fs *flag.FlagSet) *limitFlags {
	l := &limitFlags{values: map[string]*int64{}, models: modelLimits{}}
	for _, f := range limitFields {
		l.values[f.json] = fs.Int64(f.flag, 0, "limit: "+strings.ReplaceAll(f.json, "_", " ")+" (0: unlimited)")
	}
	fs.Var(l.models, "model-limit", "per-model limits 'MODEL:field=N[,field=N]' with fields "+fieldNames()+
		" (repeatable; on set, 'MODEL:none' removes the model's limits)")
	l.weight = fs.Int("weight", 0, "the key's share of the queue against other keys of its class (create's default is 1)")
	l.class = fs.String("class", "", "priority class: interactive (create's default) or batch")
	return l
}

// limitFlagNames are the flags addLimitFlags defines.
func limitFlagNames() []string {
	names := []string{"model-limit", "weight", "class"}
	for _, f := range limitFields {
		names = append(names, f.flag)
	}
	return names
}

func fieldNames() string {
	var names []string
	for _, f := range limitFields {
		names = append(names, f.json)
	}
	return strings.Join(names, ", ")
}

// addTo puts the limits the user gave (set names the flags given) into a
// create or change request. A change merges them into the key's: fields
// not given stay as they are.
func (l *limitFlags) addTo(body map[string]any, set map[string]bool) {
	limits := map[string]int64{}
	for _, f := range limitFields {
		if set[f.flag] {
			limits[f.json] = *l.values[f.json]
		}
	}
	if len(limits) > 0 {
		body["limits"] = limits
	}
	if len(l.models) > 0 {
		body["model_limits"] = l.models
	}
	if set["weight"] {
		body["weight"] = *l.weight
	}
	if set["class"] {
		body["class"] = *l.class
	}
}

// modelLimits collects --model-limit flags: model → field → value, or
// model → nil to remove the model's limits.
type modelLimits map[string]map[string]int64

func (m modelLimits) String() string { return "" }

func (m modelLimits) Set(s string) error {
	// A model name may carry a tag (llama3:8b): the limits follow the
	// last colon.
	i := strings.LastIndex(s, ":")
	if i < 0 || strings.TrimSpace(s[:i]) == "" {
		return fmt.Errorf("want MODEL:field=N[,field=N], got %q", s)
	}
	model, spec := strings.TrimSpace(s[:i]), s[i+1:]
	if strings.TrimSpace(spec) == "none" {
		m[model] = nil
		return nil
	}
	fields := m[model]
	if fields == nil {
		fields = map[string]int64{}
	}
	for _, kv := range strings.Split(spec, ",") {
		name, val, ok := strings.Cut(strings.TrimSpace(kv), "=")
		name = strings.ReplaceAll(strings.TrimSpace(name), "-", "_")
		if !ok || !slices.ContainsFunc(limitFields, func(f limitField) bool { return f.json == name }) {
			return fmt.Errorf("%q: want field=N with a field among %s", kv, fieldNames())
		}
		n, err := strconv.ParseInt(strings.TrimSpace(val), 10, 64)
		if err != nil {
			return fmt.Errorf("%q: %s must be a whole number", kv, name)
		}
		fields[name] = n
	}
	m[model] = fields
	return nil
}

// limitStatus is a key's entry of GET /api/limits, and the entry as
// the proxy sent it (for --json).
type limitStatus struct {
	apikey.Status
	raw json.RawMessage
}

// remaining is what is left of each limit; nil is unlimited.
type remaining = apikey.Remaining

// limitsText shows the limits that are set: "rpm=60 day=100000", or "-".
func limitsText(l apikey.Limits) string {
	var parts []string
	for _, f := range limitFields {
		if v := f.get(l); v != 0 {
			parts = append(parts, fmt.Sprintf("%s=%d", f.short, v))
		}
	}
	if len(parts) == 0 {
		return "-"
	}
	return strings.Join(parts, " ")
}

// leftText shows what is left of each limit set: "rpm=59 day=99000".
func leftText(l apikey.Limits, r remaining) string {
	var parts []string
	for _, f := range limitFields {
		if f.get(l) == 0 {
			continue
		}
		left := "?"
		if v := f.left(r); v != nil {
			left = strconv.FormatInt(*v, 10)
		}
		parts = append(parts, f.short+"="+left)
	}
	if len(parts) == 0 {
		return "-"
	}
	return strings.Join(parts, " ")
}

// sortedModels lists a key's limited models in order.
func sortedModels(m map[string]apikey.Limits) []string { return slices.Sorted(maps.Keys(m)) }
