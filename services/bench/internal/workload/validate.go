package workload

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
)

// Validators look only at what decides success (the final chunk or line), so
// the load generator spends its CPU on sending load, not on parsing it.

// ollamaDone is the part of an Ollama chat response that decides success.
type ollamaDone struct {
	Done  bool   `json:"done"`
	Error string `json:"error"`
}

// ollamaFinal accepts a non-streamed Ollama response with "done":true.
func ollamaFinal(body []byte) error {
	return checkOllamaChunk(bytes.TrimSpace(body))
}

// ollamaStream accepts an NDJSON stream whose last line is a "done":true chunk.
func ollamaStream(body []byte) error {
	last := lastLine(body)
	if last == nil {
		return errors.New("empty stream")
	}
	return checkOllamaChunk(last)
}

func checkOllamaChunk(chunk []byte) error {
	var d ollamaDone
	if err := json.Unmarshal(chunk, &d); err != nil {
		return fmt.Errorf("final chunk is not JSON: %w", err)
	}
	if d.Error != "" {
		return fmt.Errorf("backend error: %s", d.Error)
	}
	if !d.Done {
		return errors.New(`final chunk lacks "done":true`)
	}
	return nil
}

// openAIFinal accepts a non-streamed chat completion with at least one
// choice and no error object.
func openAIFinal(body []byte) error {
	var c struct {
		Choices []json.RawMessage `json:"choices"`
		Error   json.RawMessage   `json:"error"`
	}
	if err := json.Unmarshal(body, &c); err != nil {
		return fmt.Errorf("response is not JSON: %w", err)
	}
	if len(c.Error) > 0 && string(c.Error) != "null" {
		return fmt.Errorf("backend error: %s", c.Error)
	}
	if len(c.Choices) == 0 {
		return errors.New("completion has no choices")
	}
	return nil
}

var sseDone = []byte("data: [DONE]")

// openAIStream accepts a server-sent event stream that ends with data: [DONE].
func openAIStream(body []byte) error {
	last := lastLine(body)
	if last == nil {
		return errors.New("empty stream")
	}
	if !bytes.Equal(last, sseDone) {
		return errors.New("stream does not end with data: [DONE]")
	}
	return nil
}

// lastLine returns the last non-blank line of body, trimmed, or nil.
func lastLine(body []byte) []byte {
	body = bytes.TrimRight(body, " \t\r\n")
	if len(body) == 0 {
		return nil
	}
	if i := bytes.LastIndexByte(body, '\n'); i >= 0 {
		body = body[i+1:]
	}
	return bytes.TrimSpace(body)
}
