package usage_test

import (
	"testing"

	"github.com/droverhq/drover/pkg/usage"
)

func TestAPIOf(t *testing.T) {
	for route, want := range map[string]string{
		"/api/chat":              usage.APIOllama,
		"/api/generate":          usage.APIOllama,
		"/api/embed":             usage.APIOllama,
		"/v1/chat/completions":   usage.APIOpenAI,
		"/v1/completions":        usage.APIOpenAI,
		"/v1/embeddings":         usage.APIOpenAI,
		"/v1/images/generations": usage.APIOpenAI,
		"/v1/messages":           usage.APIAnthropic,
		"/v1/responses":          usage.APIResponses,
		"/v1/messagesx":          usage.APIOpenAI,
		"":                       "",
		"/health":                "",
	} {
		if got := usage.APIOf(route); got != want {
			t.Errorf("APIOf(%q) = %q, want %q", route, got, want)
		}
	}
}

// An event without api (written before the field existed) is named by its
// route; one with api keeps it.
func TestEventAPIName(t *testing.T) {
	old := usage.Event{Route: "/v1/messages"}
	if got := old.APIName(); got != usage.APIAnthropic {
		t.Errorf("APIName of an event without api = %q, want %q", got, usage.APIAnthropic)
	}
	set := usage.Event{Route: "/v1/messages", API: usage.APIOpenAI}
	if got := set.APIName(); got != usage.APIOpenAI {
		t.Errorf("APIName = %q, want the event's own %q", got, usage.APIOpenAI)
	}
}
