package usage

import "strings"

// The API families a client can speak to Drover, as Event.API carries them.
const (
	APIOllama    = "ollama"    // /api/*
	APIOpenAI    = "openai"    // /v1/* except the two below
	APIAnthropic = "anthropic" // /v1/messages
	APIResponses = "responses" // /v1/responses
)

// APIOf is the API family of a client-facing route: the one rule the proxy
// uses to fill Event.API and the aggregator uses for events that lack it.
// A route outside /api/ and /v1/ has none ("").
func APIOf(route string) string {
	switch {
	case route == "/v1/messages" || strings.HasPrefix(route, "/v1/messages/"):
		return APIAnthropic
	case route == "/v1/responses" || strings.HasPrefix(route, "/v1/responses/"):
		return APIResponses
	case strings.HasPrefix(route, "/v1/"):
		return APIOpenAI
	case strings.HasPrefix(route, "/api/"):
		return APIOllama
	}
	return ""
}

// APIName is e's API family: e.API, or for an event from before the field
// existed, APIOf(e.Route).
func (e *Event) APIName() string {
	if e.API != "" {
		return e.API
	}
	return APIOf(e.Route)
}
