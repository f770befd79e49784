package conformance

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"path"
	"sort"
	"strings"
)

// allowance is one deliberate difference between Drover and a single Ollama
// server. allowedDifferences is the only place the suite accepts one.
type allowance struct {
	route string // "GET /api/tags"; path.Match pattern
	field string // JSON path ("models[].endpoints"), or "" for the whole answer
	kind  allowKind
	why   string
}

type allowKind int

const (
	// extraField: Drover adds this field.
	extraField allowKind = iota
	// mergedList: the array is the fleet's, merged and de-duplicated by
	// "name": every entry Ollama lists is there, compared entry by entry
	// with the entry of the same name; more entries (from the other
	// backends) may follow, in the same shape; order may differ because
	// each backend has its own modified_at.
	mergedList
	// mergedProgress: a pull/push/create progress stream merged across the
	// backends it fanned out to: every line has the shape of some line
	// Ollama sends, repeated statuses are folded, and the last line is
	// Ollama's last line.
	mergedProgress
)

var allowedDifferences = []allowance{
	{"GET /api/tags", "models", mergedList, "Drover lists every backend's models, de-duplicated by name"},
	{"GET /api/tags", "models[].endpoints", extraField, "the backends that have the model"},
	{"GET /api/ps", "models", mergedList, "Drover lists the models loaded anywhere in the fleet"},
	{"GET /api/ps", "models[].endpoints", extraField, "the backends that have the model loaded"},
	{"POST /api/create", "", mergedProgress, "create fans out to every Ollama backend; their progress is merged"},
}

func allowed(list []allowance, route, field string, kind allowKind) bool {
	for _, a := range list {
		if ok, _ := path.Match(a.route, route); ok && a.field == field && a.kind == kind {
			return true
		}
	}
	return false
}

// volatile fields differ between any two Ollama answers, so only their JSON
// type is compared. They are properties of Ollama, not Drover differences.
var volatile = map[string]string{
	"created_at":           "clock",
	"modified_at":          "clock (each server created its models at its own time)",
	"expires_at":           "clock",
	"total_duration":       "timing",
	"load_duration":        "timing",
	"prompt_eval_duration": "timing",
	"eval_duration":        "timing",
}

// sampled fields depend on sampling; compared by type only unless the
// request fixed a seed (then both answers are the same bytes but timings).
var sampled = map[string]bool{
	"response": true, "message.content": true, "message.thinking": true,
	"eval_count": true, "context": true, "done_reason": true,
}

// omittedWhenZero are left out by Ollama when zero, which a reply whose
// first sampled token ends it is: their presence is sampling too.
var omittedWhenZero = map[string]bool{"eval_count": true, "eval_duration": true}

// differ compares a direct answer with Drover's and collects differences.
type differ struct {
	route  string
	seeded bool // the request fixed a seed: generated text must match too
	allow  []allowance
	// shapesOnly compares keys and types, and values only of the fields in
	// keptValues: for the fake backend, whose models are not real ones.
	shapesOnly bool
	diffs      []string
}

// keptValues are compared even in shapesOnly mode.
var keptValues = map[string]bool{"error": true, "model": true, "done": true, "status": true, "version": true, "name": true}

func (d *differ) allowed(field string, kind allowKind) bool {
	return allowed(d.allow, d.route, field, kind)
}

func (d *differ) errorf(format string, args ...any) {
	d.diffs = append(d.diffs, fmt.Sprintf(format, args...))
}

func decode(b []byte) (any, error) {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return nil, err
	}
	return v, nil
}

func kindOf(v any) string {
	switch v.(type) {
	case nil:
		return "null"
	case bool:
		return "bool"
	case json.Number:
		return "number"
	case string:
		return "string"
	case []any:
		return "array"
	case map[string]any:
		return "object"
	}
	return fmt.Sprintf("%T", v)
}

func join(p, k string) string {
	if p == "" {
		return k
	}
	return p + "." + k
}

// value compares two decoded JSON values at path p.
func (d *differ) value(p string, direct, via any) {
	if kindOf(direct) != kindOf(via) {
		d.errorf("%s: type %s directly, %s through Drover (%v vs %v)", p, kindOf(direct), kindOf(via), short(direct), short(via))
		return
	}
	leaf := p[strings.LastIndexByte(p, '.')+1:]
	if _, ok := volatile[leaf]; ok {
		return
	}
	if (!d.seeded || d.shapesOnly) && (sampled[p] || sampled[leaf]) {
		if arr, ok := direct.([]any); ok && len(arr) > 0 {
			if va := via.([]any); len(va) > 0 && kindOf(arr[0]) != kindOf(va[0]) {
				d.errorf("%s[]: element type %s directly, %s through Drover", p, kindOf(arr[0]), kindOf(va[0]))
			}
		}
		return
	}
	switch dv := direct.(type) {
	case map[string]any:
		vv := via.(map[string]any)
		for k, x := range dv {
			y, ok := vv[k]
			if !ok && omittedWhenZero[k] && (!d.seeded || d.shapesOnly) {
				continue
			}
			if !ok {
				d.errorf("%s: missing through Drover", join(p, k))
				continue
			}
			d.value(join(p, k), x, y)
		}
		for k := range vv {
			if _, ok := dv[k]; !ok && !d.allowed(join(p, k), extraField) && !(omittedWhenZero[k] && (!d.seeded || d.shapesOnly)) {
				d.errorf("%s: only through Drover (%v)", join(p, k), short(vv[k]))
			}
		}
	case []any:
		va := via.([]any)
		if d.allowed(p, mergedList) {
			d.merged(p, dv, va)
			return
		}
		if d.shapesOnly {
			// Keys and types of every element, whatever the order.
			want := map[string]bool{}
			for _, e := range dv {
				want[d.shape(e, p+"[]")] = true
			}
			for _, e := range va {
				if s := d.shape(e, p+"[]"); len(want) > 0 && !want[s] {
					d.errorf("%s[]: shape %s through Drover, never directly", p, s)
					return
				}
			}
			return
		}
		if len(dv) != len(va) {
			d.errorf("%s: %d elements directly, %d through Drover", p, len(dv), len(va))
			return
		}
		for i := range dv {
			d.value(p+"[]", dv[i], va[i])
		}
	case json.Number:
		if d.shapesOnly && !keptValues[leaf] {
			return
		}
		if !sameNumber(dv, via.(json.Number)) {
			d.errorf("%s: %s directly, %s through Drover", p, dv, via)
		}
	case string:
		if d.shapesOnly && !keptValues[leaf] {
			return
		}
		if normString(leaf, dv) != normString(leaf, via.(string)) {
			d.errorf("%s: %q directly, %q through Drover", p, short(dv), short(via))
		}
	default:
		if direct != via {
			d.errorf("%s: %v directly, %v through Drover", p, direct, via)
		}
	}
}

// merged compares a fleet-merged list with one server's (see mergedList).
func (d *differ) merged(p string, direct, via []any) {
	byName := map[string]any{}
	for _, e := range via {
		if m, ok := e.(map[string]any); ok {
			byName[fmt.Sprint(m["name"])] = e
		}
	}
	shapes := map[string]bool{}
	for _, e := range direct {
		name := fmt.Sprint(e.(map[string]any)["name"])
		shapes[d.shape(e, p+"[]")] = true
		got, ok := byName[name]
		if !ok {
			d.errorf("%s: %s listed directly, not through Drover", p, name)
			continue
		}
		d.value(p+"[]", e, got)
	}
	for _, e := range via {
		if s := d.shape(e, p+"[]"); len(shapes) > 0 && !shapes[s] {
			d.errorf("%s: entry %v has a shape Ollama never sends: %s", p, short(e), s)
		}
	}
}

// shape is a value's JSON skeleton: keys and types, no values; fields
// Drover may add at the route are left out.
func (d *differ) shape(v any, p string) string {
	switch x := v.(type) {
	case map[string]any:
		keys := make([]string, 0, len(x))
		for k := range x {
			if !d.allowed(join(p, k), extraField) {
				keys = append(keys, k)
			}
		}
		sort.Strings(keys)
		parts := make([]string, len(keys))
		for i, k := range keys {
			parts[i] = k + ":" + d.shape(x[k], join(p, k))
		}
		return "{" + strings.Join(parts, ",") + "}"
	case []any:
		if len(x) == 0 {
			return "[]"
		}
		return "[" + d.shape(x[0], p+"[]") + "]"
	}
	return kindOf(v)
}

func sameNumber(a, b json.Number) bool {
	if a == b {
		return true
	}
	x, err1 := a.Float64()
	y, err2 := b.Float64()
	return err1 == nil && err2 == nil && math.Abs(x-y) <= 1e-5*math.Max(1, math.Abs(x))
}

// unorderedLines are /api/show texts that Ollama prints from a map, so
// their lines come in any order, even from one server.
var unorderedLines = map[string]bool{"modelfile": true, "parameters": true}

func normString(leaf, s string) string {
	s = normPaths(s)
	if unorderedLines[leaf] {
		ls := strings.Split(s, "\n")
		sort.Strings(ls)
		s = strings.Join(ls, "\n")
	}
	return s
}

// normPaths replaces each server's models directory with one placeholder:
// /api/show names the model's blob by its path on that server.
func normPaths(s string) string {
	for _, o := range []*ollama{srvA, srvB} {
		if o != nil && o.models != "" {
			s = strings.ReplaceAll(s, o.models, "$OLLAMA_MODELS")
		}
	}
	return s
}

func short(v any) string {
	s := fmt.Sprint(v)
	if b, err := json.Marshal(v); err == nil {
		s = string(b)
	}
	if len(s) > 120 {
		s = s[:120] + "..."
	}
	return s
}

// compareReplies compares a direct answer with Drover's answer to the same
// request: status, Content-Type, then the body as JSON, NDJSON or text.
func compareReplies(route string, seeded bool, direct, via reply) []string {
	return (&differ{route: route, seeded: seeded, allow: allowedDifferences}).replies(direct, via)
}

func (d *differ) replies(direct, via reply) []string {
	if direct.status != via.status {
		d.errorf("status %d directly, %d through Drover (bodies %q / %q)", direct.status, via.status, short(string(direct.body)), short(string(via.body)))
		return d.diffs
	}
	if a, b := direct.header.Get("Content-Type"), via.header.Get("Content-Type"); a != b {
		d.errorf("Content-Type %q directly, %q through Drover", a, b)
	}
	ct := direct.header.Get("Content-Type")
	switch {
	case len(direct.body) == 0 || len(via.body) == 0:
		if len(direct.body) != len(via.body) {
			d.errorf("body %q directly, %q through Drover", short(string(direct.body)), short(string(via.body)))
		}
	case strings.HasPrefix(ct, "application/x-ndjson"):
		d.stream(lines(direct.body), lines(via.body))
	case strings.HasPrefix(ct, "application/json"):
		x, err1 := decode(direct.body)
		y, err2 := decode(via.body)
		if err1 != nil || err2 != nil {
			d.errorf("bodies not JSON: %v / %v", err1, err2)
			break
		}
		d.value("", x, y)
	default:
		if !bytes.Equal(direct.body, via.body) {
			d.errorf("body %q directly, %q through Drover", short(string(direct.body)), short(string(via.body)))
		}
	}
	return d.diffs
}

// stream compares NDJSON chunk sequences: the run-length-collapsed
// sequence of chunk shapes (how many content chunks a reply has is
// sampling), each chunk's fields, and the final chunk in full. With a seed,
// every chunk must match one for one.
func (d *differ) stream(direct, via [][]byte) {
	dv, err1 := decodeAll(direct)
	vv, err2 := decodeAll(via)
	if err1 != nil || err2 != nil {
		d.errorf("stream lines not JSON: %v / %v", err1, err2)
		return
	}
	if len(dv) == 0 || len(vv) == 0 {
		if len(dv) != len(vv) {
			d.errorf("%d chunks directly, %d through Drover", len(dv), len(vv))
		}
		return
	}
	if d.allowed("", mergedProgress) {
		shapes := map[string]bool{}
		for _, c := range dv {
			shapes[d.shape(c, "")] = true
		}
		for _, c := range vv {
			if !shapes[d.shape(c, "")] {
				d.errorf("progress line %v has a shape Ollama never sends", short(c))
			}
		}
		d.value("(last line)", dv[len(dv)-1], vv[len(vv)-1])
		return
	}
	if d.seeded && !d.shapesOnly {
		if len(dv) != len(vv) {
			d.errorf("%d chunks directly, %d through Drover", len(dv), len(vv))
			return
		}
		for i := range dv {
			d.value("", dv[i], vv[i])
		}
		return
	}
	if a, b := d.collapsed(dv), d.collapsed(vv); a != b && !stoppedAtOnce(dv) && !stoppedAtOnce(vv) {
		d.errorf("chunk sequence %s directly, %s through Drover", a, b)
	}
	if d.shapesOnly {
		d.value("", dv[len(dv)-1], vv[len(vv)-1])
		return
	}
	// Each chunk against a direct chunk of the same shape.
	byShape := map[string]any{}
	for _, c := range dv[:len(dv)-1] {
		if s := d.shape(c, ""); byShape[s] == nil {
			byShape[s] = c
		}
	}
	for _, c := range vv[:len(vv)-1] {
		if ref := byShape[d.shape(c, "")]; ref != nil {
			d.value("", ref, c)
		}
	}
	d.value("", dv[len(dv)-1], vv[len(vv)-1])
}

func decodeAll(ls [][]byte) ([]any, error) {
	out := make([]any, 0, len(ls))
	for _, l := range ls {
		v, err := decode(l)
		if err != nil {
			return nil, fmt.Errorf("%w in %q", err, short(string(l)))
		}
		out = append(out, v)
	}
	return out, nil
}

// collapsed is the chunk shapes with runs folded, one or more alike: "A+ B+".
func (d *differ) collapsed(chunks []any) string {
	var parts []string
	prev := ""
	for _, c := range chunks {
		s := d.shape(c, "")
		if s != prev {
			parts = append(parts, s+"+")
			prev = s
		}
	}
	return strings.Join(parts, " ")
}

// stoppedAtOnce is a reply whose first sampled token was end-of-sequence:
// only the final chunk, no content chunks at all.
func stoppedAtOnce(chunks []any) bool {
	if len(chunks) != 1 {
		return false
	}
	m, _ := chunks[0].(map[string]any)
	n, _ := m["eval_count"].(json.Number)
	return n == "" || n == "0" || n == "1"
}
