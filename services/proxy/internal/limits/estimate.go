package limits

import (
	"encoding/json"
	"strings"
)

// bytesPerToken is the estimate's rule for prompts: one token per 4 bytes
// of the whole request body. JSON's quotes, keys and punctuation count
// too, so for text this is above what tokenizers give (about 4 bytes of
// English per token); the settlement replaces it with the real count.
const bytesPerToken = 4

// outputFields are the fields that bound a request's output, by API.
type outputFields struct {
	Options struct {
		NumPredict *int64 `json:"num_predict"` // Ollama
	} `json:"options"`
	MaxTokens           *int64 `json:"max_tokens"`            // OpenAI (legacy), Anthropic
	MaxCompletionTokens *int64 `json:"max_completion_tokens"` // OpenAI
	MaxOutputTokens     *int64 `json:"max_output_tokens"`     // OpenAI Responses
}

// Estimate is what a request reserves: its prompt (body bytes / 4, rounded
// up) and its output: the request's own bound (num_predict, max_tokens,
// max_completion_tokens or max_output_tokens; the smallest positive one
// when several are set), else defaultOut. Embedding routes produce no
// output tokens.
func Estimate(route string, body []byte, defaultOut int64) int64 {
	prompt := (int64(len(body)) + bytesPerToken - 1) / bytesPerToken
	if strings.Contains(route, "embed") {
		return prompt
	}
	return prompt + outputBound(body, defaultOut)
}

func outputBound(body []byte, defaultOut int64) int64 {
	var f outputFields
	if json.Unmarshal(body, &f) != nil {
		return defaultOut // a body the handler accepted with odd types: the default
	}
	out := int64(-1)
	for _, v := range []*int64{f.Options.NumPredict, f.MaxTokens, f.MaxCompletionTokens, f.MaxOutputTokens} {
		// num_predict -1 (or -2) is Ollama's "until done": the default.
		if v != nil && *v > 0 && (out < 0 || *v < out) {
			out = *v
		}
	}
	if out < 0 {
		return defaultOut
	}
	return out
}
