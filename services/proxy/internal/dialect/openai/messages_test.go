package openai

import (
	"bytes"
	"net/http"
	"strings"
	"testing"

	"github.com/droverhq/drover/services/proxy/internal/dialect"
	"github.com/droverhq/drover/services/proxy/internal/meter"
)

// /v1/messages goes to the backend as a chat completion under its name for
// the model; the answer is counted from the backend's own bytes (complete
// at [DONE]) and reaches the client in Anthropic's terms under the
// client's name.
func TestMessagesExchange(t *testing.T) {
	if !(Dialect{}).Serves("/v1/messages") {
		t.Fatal("/v1/messages is not served")
	}
	c := dialect.Call{Route: "/v1/messages", Model: "pub", Target: "backend-m", Stream: true,
		Body: []byte(`{"model":"pub","max_tokens":3,"stream":true,"messages":[{"role":"user","content":"hi"}]}`)}
	x, err := (Dialect{}).Exchange(c)
	if err != nil {
		t.Fatal(err)
	}
	if x.Path != "/v1/chat/completions" || !bytes.Contains(x.Body, []byte(`"model":"backend-m"`)) || !bytes.Contains(x.Body, []byte(`"include_usage":true`)) {
		t.Fatalf("%s %s", x.Path, x.Body)
	}
	backend := "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"hey\"},\"finish_reason\":\"length\"}]}\n\n" +
		"data: {\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":3}}\n\n"
	var m meter.Meter
	var client bytes.Buffer
	h := http.Header{}
	f := x.Transform(http.StatusOK, h, &client)
	for _, part := range []string{backend, "data: [DONE]\n\n"} {
		if x.Complete(&m) {
			t.Fatal("complete before [DONE]")
		}
		if in, out := x.Tokens(&m); in != nil || out != nil {
			t.Fatal("counts before [DONE]")
		}
		m.Write([]byte(part)) //nolint:errcheck
		f.Write([]byte(part)) //nolint:errcheck
	}
	f.Close() //nolint:errcheck
	in, out := x.Tokens(&m)
	if !x.Complete(&m) || in == nil || *in != 5 || *out != 3 {
		t.Fatalf("counts %v %v", in, out)
	}
	got := client.String()
	if h.Get("Content-Type") != "text/event-stream" || !strings.Contains(got, `"model":"pub"`) ||
		!strings.Contains(got, `{"type":"message_delta","delta":{"stop_reason":"max_tokens"},"usage":{"input_tokens":5,"output_tokens":3}}`) {
		t.Fatalf("%v\n%s", h, got)
	}

	// A body Ollama would refuse is the client's mistake.
	c.Body = []byte(`{"model":"pub","max_tokens":3,"messages":[{"role":"user","content":7}]}`)
	if _, err := (Dialect{}).Exchange(c); err == nil || err.Error() != "invalid message content type: float64" {
		t.Errorf("refused with %v", err)
	}
}
