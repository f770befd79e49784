package translate

import (
	"encoding/json"
	"strings"
	"testing"
)

// A backend that ends its stream cleanly but before the answer did (no
// finish_reason, no [DONE]) cut it short: the translated stream ends with
// the client API's error, never its normal end. With a finish_reason and
// no [DONE], the answer was whole and ends as [DONE] would have ended it.
func TestTruncatedStreamEndsWithError(t *testing.T) {
	const cut = `data: {"choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}` + "\n\n" +
		`data: {"choices":[{"index":0,"delta":{"content":"Hel"}}]}` + "\n\n" +
		`data: {"choices":[{"index":0,"delta":{"content":"lo"}}]}` + "\n\n"
	for _, n := range []int{1, 7, len(cut)} {
		got, _ := feedMessages(t, Messages{Stream: true}, 200, cut, n)
		events := strings.Split(strings.TrimSuffix(got, "\n\n"), "\n\n")
		want := `event: error` + "\n" + `data: {"type":"error","error":{"type":"api_error","message":"` + TruncatedMessage + `"}}`
		if events[len(events)-1] != want || strings.Contains(got, "message_stop") || strings.Contains(got, "message_delta") ||
			strings.Count(got, `"type":"text_delta"`) != 2 {
			t.Errorf("anthropic, writes of %d: the cut stream\n%s\nwant the two deltas, then %s", n, got, want)
		}

		got, _ = feed(t, Request{Kind: Chat, Stream: true}, 200, cut, n)
		lines := strings.Split(strings.TrimSuffix(got, "\n"), "\n")
		var last struct {
			Error string `json:"error"`
			Done  *bool  `json:"done"`
		}
		if err := json.Unmarshal([]byte(lines[len(lines)-1]), &last); err != nil || last.Error != TruncatedMessage || last.Done != nil ||
			strings.Contains(got, `"done":true`) || len(lines) != 3 {
			t.Errorf("ollama, writes of %d: the cut stream\n%s\nwant two content lines, then {\"error\": %q}", n, got, TruncatedMessage)
		}
	}

	whole := cut + `data: {"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}` + "\n\n"
	if got, _ := feedMessages(t, Messages{Stream: true}, 200, whole, 5); !strings.HasSuffix(got, "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n") || strings.Contains(got, "event: error") {
		t.Errorf("anthropic, finished without [DONE]:\n%s", got)
	}
	if got, _ := feed(t, Request{Kind: Chat, Stream: true}, 200, whole, 5); !strings.Contains(got, `"done":true`) || strings.Contains(got, `"error"`) {
		t.Errorf("ollama, finished without [DONE]:\n%s", got)
	}
}
