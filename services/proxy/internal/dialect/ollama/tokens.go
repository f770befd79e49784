package ollama

import "github.com/droverhq/drover/services/proxy/internal/meter"

// tokens reads the counts of Ollama's own routes; its /v1 routes report
// usage as OpenAI does (openai.V1).
var tokens = map[string]func(*meter.Meter) (in, out *int64){
	"/api/chat":       countGeneration,
	"/api/generate":   countGeneration,
	"/api/embed":      countEmbedding,
	"/api/embeddings": countEmbedding,
}

// countGeneration reads Ollama's final chunk (or non-stream body). Ollama
// omits a zero count, so a finished response without one counts zero; a
// body that broke off (meter.Meter.MarkCut) may just not have reached it,
// so there a missing count is unknown. Ollama writes prompt_eval_count
// before eval_count: with eval_count read, a missing prompt count was an
// omitted zero even in a cut body.
func countGeneration(m *meter.Meter) (in, out *int64) {
	if !m.Has("done", "true") {
		return nil, nil
	}
	i, iok := m.Count("prompt_eval_count")
	o, ook := m.Count("eval_count")
	switch {
	case ook || !m.Cut():
		return &i, &o
	case iok:
		return &i, nil
	}
	return nil, nil
}

// generationDone reports an answer that reached its final chunk (or a
// whole non-streamed body), "done":true; an embedding's answer is whole
// once its body ended, which this does not judge, so it is never "done".
func generationDone(m *meter.Meter) bool { return m.Has("done", "true") }

// countEmbedding reads an embed response's prompt_eval_count; embeddings
// produce no output tokens. The legacy /api/embeddings reports no count.
func countEmbedding(m *meter.Meter) (in, out *int64) {
	zero := int64(0)
	if i, ok := m.Count("prompt_eval_count"); ok {
		return &i, &zero
	}
	return nil, &zero
}
