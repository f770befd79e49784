package openai

import (
	"testing"

	"github.com/droverhq/drover/services/proxy/internal/dialect"
	"github.com/droverhq/drover/services/proxy/internal/meter"
)

// Responses and images are passed as they are; tokens are the final
// Response's usage, a stream is whole at its last event.
func TestPassedRoutes(t *testing.T) {
	const created = "event: response.created\ndata: {\"response\":{\"usage\":null},\"sequence_number\":0,\"type\":\"response.created\"}\n\n"
	const delta = "event: response.output_text.delta\ndata: {\"delta\":\"\\\"type\\\":\\\"response.completed\\\"\",\"type\":\"response.output_text.delta\"}\n\n"
	const completed = "event: response.completed\ndata: {\"response\":{\"max_output_tokens\":9,\"usage\":{\"input_tokens\":28,\"input_tokens_details\":{\"cached_tokens\":0},\"output_tokens\":3,\"output_tokens_details\":{\"reasoning_tokens\":0},\"total_tokens\":31}},\"sequence_number\":9,\"type\":\"response.completed\"}\n\n"
	cases := []struct {
		name, route string
		stream      bool
		body        string
		in, out     int64
		known, done bool
	}{
		{"whole response", "/v1/responses", false, `{"id":"resp_1","usage":{"input_tokens":28,"output_tokens":5,"total_tokens":33,"input_tokens_details":{"cached_tokens":0},"output_tokens_details":{"reasoning_tokens":0}},"max_output_tokens":5,"metadata":{}}`, 28, 5, true, false},
		{"stream completed", "/v1/responses", true, created + delta + completed, 28, 3, true, true},
		{"stream cut", "/v1/responses", true, created + delta, 0, 0, false, false},
		{"stream incomplete", "/v1/responses", true, "event: response.incomplete\ndata: {\"response\":{\"usage\":{\"input_tokens\":4,\"output_tokens\":2}},\"type\":\"response.incomplete\"}\n\n", 4, 2, true, true},
		{"stream failed", "/v1/responses", true, "event: response.failed\ndata: {\"response\":{\"usage\":null},\"type\":\"response.failed\"}\n\n", 0, 0, false, true},
		{"image with usage", "/v1/images/generations", false, `{"data":[{"b64_json":"AA=="}],"usage":{"input_tokens":7,"output_tokens":100,"total_tokens":107}}`, 7, 100, true, false},
		{"image without usage", "/v1/images/edits", false, `{"data":[{"b64_json":"AA=="}]}`, 0, 0, false, false},
	}
	for _, c := range cases {
		body := []byte(`{"model":"m","stream":false}`)
		x, err := V1(dialect.Call{Route: c.route, Body: body, Model: "m", Target: "m", Stream: c.stream})
		if err != nil || x.Path != c.route || string(x.Body) != string(body) || x.Transform != nil {
			t.Fatalf("%s: not passed as it is: %v %q %q", c.name, err, x.Path, x.Body)
		}
		var m meter.Meter
		m.Write([]byte(c.body)) //nolint:errcheck
		in, out := x.Tokens(&m)
		if (in != nil && out != nil) != c.known || (c.known && (*in != c.in || *out != c.out)) {
			t.Errorf("%s: tokens %v %v", c.name, in, out)
		}
		if done := x.Complete != nil && x.Complete(&m); done != c.done {
			t.Errorf("%s: complete = %v", c.name, done)
		}
	}
	// An alias renames the model and nothing else is added.
	x, err := V1(dialect.Call{Route: "/v1/responses", Body: []byte(`{"model":"a","stream":true}`), Model: "a", Target: "b", Stream: true})
	if err != nil || string(x.Body) != `{"model":"b","stream":true}` {
		t.Fatalf("renamed: %v %s", err, x.Body)
	}
}
