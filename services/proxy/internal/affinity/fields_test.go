package affinity

import (
	"encoding/json"
	"fmt"
	"reflect"
	"strings"
	"testing"
)

// The scanner reads every body as encoding/json does, or gives way to it.
func FuzzScan(f *testing.F) {
	for _, seed := range []string{
		`{"model":"m","messages":[{"role":"system","content":"be brief"},{"role":"user","content":"hi","images":["aGk="]}],"stream":true}`,
		`{"model":"m","messages":[{"role":"assistant","content":null,"tool_calls":[{"function":{"name":"f","arguments":{"a":1}}}]},{"role":"tool","tool_call_id":"c1","name":"f","content":"42"}],"tools":[{"type":"function"}]}`,
		`{"model":"m","system":"s","prompt":"once upon","images":["x",null],"suffix":"end","options":{"num_predict":5,"temperature":0.2}}`,
		`{"model":"m","prompt":["a","b"],"max_tokens":7,"user":"u"}`,
		`{"model":"m","messages":[{"role":"user","content":[{"type":"text","text":"hi"},{"type":"image_url","image_url":{"url":"data:x"}}]}],"max_completion_tokens":9,"prompt_cache_key":"k"}`,
		`{"model":"m","system":[{"type":"text","text":"s"}],"messages":[{"role":"user","content":"hi"}],"metadata":{"user_id":"u1"},"max_tokens":100}`,
		`{"Messages":[{"role":"user","content":"case"}]}`,
		`{"messages":[{"role":"us\u0065r","content":"escaped role"}]}`,
		`{"messages":[{"role":"user","content":"a"}],"messages":[{"role":"user","content":"b"}]}`,
		`{"messages":"not a list"}`,
		`{"options":{"num_predict":1.5}}`,
		`{"messages":[null,{"role":"user","content":"x"}],"tools":null,"system":null}`,
		`null`,
		`{"model":"m","instructions":"be brief","input":[{"role":"user","content":[{"type":"input_text","text":"hi"}]}],"prompt_cache_key":"k"}`,
		`{"model":"m","input":"just a string","instructions":null}`,
		`{"messages" : [ { "role" : "user" , "content" : "spaced \" quote \\" } ] , "stream" : false }`,
	} {
		f.Add([]byte(seed))
	}
	ps := Parser{BlockBytes: 64, Chain: true, DefaultOutput: 512}
	f.Fuzz(func(t *testing.T, body []byte) {
		if !json.Valid(body) {
			return // the handlers refuse it before routing
		}
		fast, slow := ps.Parse("/api/chat", body, nil), ps.parseSlow("/api/chat", body, nil)
		if len(fast.Chain) == 0 {
			fast.Chain = nil
		}
		if len(slow.Chain) == 0 {
			slow.Chain = nil
		}
		if !reflect.DeepEqual(fast, slow) {
			t.Fatalf("body %s\nscanner  %+v\nencoding %+v", body, fast, slow)
		}
	})
}

// The scanner takes the bodies clients send (no fallback to encoding/json).
func TestScanTakesCommonBodies(t *testing.T) {
	msgs := []any{map[string]any{"role": "system", "content": strings.Repeat("s ", 100)},
		map[string]any{"role": "user", "content": "hi \"there\"\n", "images": []string{"aGk="}}}
	for _, body := range []map[string]any{
		{"model": "m", "messages": msgs, "stream": true, "options": map[string]any{"num_predict": 3}},
		{"model": "m", "prompt": "p", "system": "s", "images": []string{"x"}},
		{"model": "m", "messages": msgs, "max_tokens": 5, "metadata": map[string]any{"user_id": "u"}, "tools": []any{}},
	} {
		raw, _ := json.Marshal(body)
		var f fields
		if !scan(raw, &f) {
			t.Errorf("scan gave way on %s", raw)
		}
	}
	if fmt.Sprint(scan([]byte(`{"Messages":[]}`), &fields{})) != "false" {
		t.Error("a key matching only case-insensitively was taken")
	}
}
