package openai

import (
	"bytes"
	"encoding/json"
	"testing"

	"github.com/droverhq/drover/services/proxy/internal/meter"
)

func count(stream bool, body string) (in, out *int64) {
	var m meter.Meter
	m.Write([]byte(body)) //nolint:errcheck
	if stream {
		return countStream(&m)
	}
	return countWhole(&m)
}

func TestCount(t *testing.T) {
	cases := []struct {
		name    string
		stream  bool
		body    string
		in, out int64
		known   bool
	}{
		{"whole", false, `{"choices":[],"usage":{"prompt_tokens":5,"completion_tokens":7,"total_tokens":12,"prompt_tokens_details":{"cached_tokens":1}}}`, 5, 7, true},
		{"embeddings", false, `{"data":[],"usage":{"prompt_tokens":9,"total_tokens":9}}`, 9, 0, true},
		{"stream usage chunk", true, "data: {\"choices\":[{}]}\n\ndata: {\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":4}}\n\ndata: [DONE]\n\n", 3, 4, true},
		{"stream cut before [DONE]", true, "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":0,\"completion_tokens\":0}}\n\n", 0, 0, false},
		{"llama.cpp timings", true, "data: {\"choices\":[{}],\"timings\":{\"cache_n\":2,\"prompt_n\":3,\"predicted_n\":8}}\n\ndata: [DONE]\n\n", 5, 8, true},
		{"usage wins over timings", false, `{"usage":{"prompt_tokens":5,"completion_tokens":8},"timings":{"prompt_n":3,"predicted_n":8}}`, 5, 8, true},
		{"nothing reported", true, "data: {\"choices\":[{}]}\n\ndata: [DONE]\n\n", 0, 0, false},
		{"null usage", false, `{"choices":[],"usage":null}`, 0, 0, false},
	}
	for _, c := range cases {
		in, out := count(c.stream, c.body)
		if (in != nil && out != nil) != c.known || (c.known && (*in != c.in || *out != c.out)) {
			t.Errorf("%s: got %v %v", c.name, in, out)
		}
		if !c.known && (in != nil || out != nil) {
			t.Errorf("%s: unknown counts reported", c.name)
		}
	}
}

func TestDropUsage(t *testing.T) {
	stream := "data: {\"id\":\"a\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"usage\"}}]}\n\n" +
		"data: {\"id\":\"a\",\"choices\":[{\"index\":0,\"text\":\"x\"}],\"usage\":{\"prompt_tokens\":0,\"completion_tokens\":0}}\n\n" +
		"data: {\"id\":\"a\",\"choices\":[{\"index\":0,\"delta\":{}}],\"usage\":null}\n\n" +
		"data: {\"id\":\"a\",\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":4}}\n\n" +
		"data: [DONE]\n\n"
	var out bytes.Buffer
	f := dropUsage(&out)
	for i := 0; i < len(stream); i += 10 {
		f.Write([]byte(stream[i:min(i+10, len(stream))])) //nolint:errcheck
	}
	f.Close() //nolint:errcheck
	events := bytes.Split(bytes.TrimSpace(out.Bytes()), []byte("\n\n"))
	if len(events) != 4 || string(events[3]) != "data: [DONE]" || string(events[2]) != `data: {"id":"a","choices":[{"index":0,"delta":{}}]}` {
		t.Fatalf("got %q", out.String())
	}
	// Content that merely mentions usage passes as it was.
	if string(events[0]) != "data: {\"id\":\"a\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"usage\"}}]}" {
		t.Fatalf("content chunk changed: %s", events[0])
	}
	for _, ev := range events[1:3] {
		var doc map[string]json.RawMessage
		if err := json.Unmarshal(bytes.TrimPrefix(ev, []byte("data: ")), &doc); err != nil {
			t.Fatal(err)
		}
		if _, ok := doc["usage"]; ok || doc["choices"] == nil {
			t.Fatalf("usage left in %s", ev)
		}
	}
}

func TestWithUsageKeepsFields(t *testing.T) {
	out, err := withUsage([]byte(`{"model":"pub","stream":true,"stream_options":{"x":1},"n":2,"tool_choice":"auto"}`), "backend", true)
	if err != nil {
		t.Fatal(err)
	}
	if string(out) != `{"model":"backend","n":2,"stream":true,"stream_options":{"include_usage":true,"x":1},"tool_choice":"auto"}` {
		t.Fatalf("got %s", out)
	}
	if _, err := withUsage([]byte(`{"stream_options":"bad"}`), "m", false); err == nil {
		t.Fatal("bad stream_options accepted")
	}
	// Without stream_options and with the same model, the field is
	// spliced in and the rest left byte for byte.
	body := ` {"model":"m", "messages":[{"content":"x"}] , "stream":true}`
	out, err = withUsage([]byte(body), "m", false)
	if err != nil || string(out) != ` {"stream_options":{"include_usage":true},"model":"m", "messages":[{"content":"x"}] , "stream":true}` {
		t.Fatalf("splice: %s %v", out, err)
	}
	// A null stream_options must not be left beside the new one.
	out, _ = withUsage([]byte(`{"model":"m","stream_options":null}`), "m", false)
	if string(out) != `{"model":"m","stream_options":{"include_usage":true}}` {
		t.Fatalf("null stream_options: %s", out)
	}
}
