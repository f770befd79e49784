package openai

import "github.com/droverhq/drover/services/proxy/internal/dialect"

// passRoutes are the /v1 routes whose requests go to the backend as they
// are (but the model's name for an alias): their streams carry usage
// without being asked (OpenAI's Responses API), or they have no stream.
// Their tokens are usage.input_tokens and usage.output_tokens (tokens.go).
var passRoutes = map[string]bool{
	"/v1/responses":          true,
	"/v1/images/generations": true,
	"/v1/images/edits":       true,
}

// passed is the exchange for a route in passRoutes. A Responses stream ends
// with the whole Response, usage and all; an image answer is read whole.
func passed(c dialect.Call) (dialect.Exchange, error) {
	x, err := dialect.Pass(c)
	x.Tokens = countUsage
	if c.Stream && c.Route == "/v1/responses" {
		x.Tokens, x.Complete = countResponseStream, responseDone
	}
	return x, err
}
