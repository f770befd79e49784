package ollamatest

import (
	"encoding/json"
	"testing"
)

// Details the real-Ollama conformance suite (services/proxy/conformance,
// TestFakeMatchesOllama) found the fake getting wrong.
func TestRealOllamaDetails(t *testing.T) {
	e := start(t, Config{})

	// A raw generate has no context in its final chunk.
	for body, wantContext := range map[string]bool{
		`{"model":"tiny","prompt":"hi","raw":true,"stream":false}`: false,
		`{"model":"tiny","prompt":"hi","stream":false}`:            true,
	} {
		var final map[string]any
		if err := json.Unmarshal(e.post("/api/generate", body).body, &final); err != nil {
			t.Fatal(err)
		}
		if _, ok := final["context"]; ok != wantContext {
			t.Errorf("%s: context present = %v", body, ok)
		}
	}

	// Nothing generated: Ollama omits eval_count and eval_duration alike.
	var final map[string]any
	if err := json.Unmarshal(e.post("/api/generate", `{"model":"tiny","prompt":"hi","stream":false,"fake":{"chunks":0}}`).body, &final); err != nil {
		t.Fatal(err)
	}
	_, count := final["eval_count"]
	_, dur := final["eval_duration"]
	if count || dur || final["done"] != true {
		t.Errorf("no tokens generated: %v", final)
	}

	// /api/show's model_info has the keys the tiny GGUFs give real Ollama.
	for model, extra := range map[string]string{"tiny": "", "tiny-embed": "llama.pooling_type"} {
		var show struct {
			ModelInfo map[string]any `json:"model_info"`
		}
		if err := json.Unmarshal(e.post("/api/show", `{"model":"`+model+`","verbose":true}`).body, &show); err != nil {
			t.Fatal(err)
		}
		keys := []string{"general.alignment", "llama.attention.head_count_kv", "llama.attention.layer_norm_rms_epsilon",
			"llama.feed_forward_length", "llama.rope.dimension_count", "llama.rope.freq_base", "tokenizer.ggml.add_bos_token",
			"tokenizer.ggml.add_eos_token", "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id", "tokenizer.ggml.pre",
			"tokenizer.ggml.scores", "tokenizer.ggml.token_type", "tokenizer.ggml.tokens", "tokenizer.ggml.unknown_token_id"}
		if extra != "" {
			keys = append(keys, extra)
		}
		for _, k := range keys {
			if _, ok := show.ModelInfo[k]; !ok {
				t.Errorf("%s: model_info lacks %s", model, k)
			}
		}
		if _, ok := show.ModelInfo["tokenizer.ggml.scores"].([]any); !ok {
			t.Errorf("%s verbose: scores = %v, want a list", model, show.ModelInfo["tokenizer.ggml.scores"])
		}
	}
}
