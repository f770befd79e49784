package usage_test

import (
	"bytes"
	"encoding/json"
	"io/fs"
	"strings"
	"testing"
	"time"

	"github.com/santhosh-tekuri/jsonschema/v6"

	"github.com/droverhq/drover/pkg/usage"
	"github.com/droverhq/drover/schemas"
)

func compileSchema(t *testing.T) *jsonschema.Schema {
	t.Helper()
	raw, err := fs.ReadFile(schemas.FS, "usage/usage.v1.json")
	if err != nil {
		t.Fatal(err)
	}
	doc, err := jsonschema.UnmarshalJSON(bytes.NewReader(raw))
	if err != nil {
		t.Fatal(err)
	}
	c := jsonschema.NewCompiler()
	c.DefaultDraft(jsonschema.Draft2020)
	c.AssertFormat()
	if err := c.AddResource("usage.v1.json", doc); err != nil {
		t.Fatal(err)
	}
	sch, err := c.Compile("usage.v1.json")
	if err != nil {
		t.Fatal(err)
	}
	return sch
}

func validate(t *testing.T, sch *jsonschema.Schema, b []byte) error {
	t.Helper()
	inst, err := jsonschema.UnmarshalJSON(bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	return sch.Validate(inst)
}

func fullEvent() usage.Event {
	return usage.Event{
		Schema: usage.SchemaVersion, ID: usage.NewID(), Time: time.Now().UTC(),
		Replica: "proxy-1", Endpoint: "gpu-a:11434", Model: "llama3.2:3b", BackendModel: "llama3.2:3b-q4",
		APIKey: "team-a", Route: "/api/chat", API: usage.APIOllama, Status: 200,
		InputTokens: usage.Int64(12), OutputTokens: usage.Int64(340), Stream: true,
		TTFBMs: 41.5, DurationMs: 2200.25, Attempts: 1,
	}
}

func TestEncodedEventsMatchSchema(t *testing.T) {
	sch := compileSchema(t)
	unknown := fullEvent()
	unknown.InputTokens, unknown.OutputTokens = nil, nil
	minimal := usage.Event{Schema: usage.SchemaVersion, ID: usage.NewID(), Time: time.Now().UTC(), Status: 502, Error: true}
	partial := fullEvent()
	partial.InputTokens, partial.Error, partial.Partial = nil, true, true
	for name, ev := range map[string]usage.Event{"full": fullEvent(), "unknown tokens": unknown, "minimal error": minimal, "partial": partial} {
		t.Run(name, func(t *testing.T) {
			b := usage.AppendJSON(nil, &ev) // what publishers send
			if err := validate(t, sch, b); err != nil {
				t.Fatalf("encoded event %s does not match the schema: %v", b, err)
			}
			var back usage.Event
			if err := json.Unmarshal(b, &back); err != nil {
				t.Fatal(err)
			}
			if !back.Time.Equal(ev.Time) || back.ID != ev.ID || (back.InputTokens == nil) != (ev.InputTokens == nil) || back.Partial != ev.Partial {
				t.Fatalf("round trip changed the event: %+v -> %+v", ev, back)
			}
		})
	}
}

// The schema must reject what the aggregator would have to dead-letter, so
// that a producer testing against it finds out first.
func TestSchemaRejectsBadEvents(t *testing.T) {
	sch := compileSchema(t)
	good, err := json.Marshal(fullEvent())
	if err != nil {
		t.Fatal(err)
	}
	mutate := func(f func(m map[string]any)) []byte {
		var m map[string]any
		if err := json.Unmarshal(good, &m); err != nil {
			t.Fatal(err)
		}
		f(m)
		b, _ := json.Marshal(m)
		return b
	}
	cases := map[string][]byte{
		"wrong version":     mutate(func(m map[string]any) { m["schema"] = "usage.v2" }),
		"no id":             mutate(func(m map[string]any) { delete(m, "id") }),
		"empty id":          mutate(func(m map[string]any) { m["id"] = "" }),
		"bad time":          mutate(func(m map[string]any) { m["time"] = "yesterday" }),
		"tokens as string":  mutate(func(m map[string]any) { m["input_tokens"] = "12" }),
		"negative tokens":   mutate(func(m map[string]any) { m["output_tokens"] = -1 }),
		"fractional tokens": mutate(func(m map[string]any) { m["output_tokens"] = 1.5 }),
		"tokens missing":    mutate(func(m map[string]any) { delete(m, "input_tokens") }),
		"status as string":  mutate(func(m map[string]any) { m["status"] = "200" }),
		"unknown api":       mutate(func(m map[string]any) { m["api"] = "grpc" }),
		"not an object":     []byte(`[1,2]`),
	}
	for name, b := range cases {
		t.Run(name, func(t *testing.T) {
			if err := validate(t, sch, b); err == nil {
				t.Fatalf("schema accepted %s", b)
			}
		})
	}
}

// Every JSON field of Event must be a property of the schema, so that the
// two cannot drift apart.
func TestSchemaCoversEveryField(t *testing.T) {
	raw, err := fs.ReadFile(schemas.FS, "usage/usage.v1.json")
	if err != nil {
		t.Fatal(err)
	}
	var doc struct {
		Properties map[string]any `json:"properties"`
	}
	if err := json.Unmarshal(raw, &doc); err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	full := fullEvent()
	full.Partial = true // omitted when false
	b, _ := json.Marshal(full)
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	for k := range m {
		if _, ok := doc.Properties[k]; !ok {
			t.Errorf("Event field %q is not in usage.v1.json", k)
		}
	}
	for k := range doc.Properties {
		if _, ok := m[k]; !ok && !strings.Contains(k, "$") {
			t.Errorf("schema property %q is not an Event field", k)
		}
	}
}
