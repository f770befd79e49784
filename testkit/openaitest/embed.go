package openaitest

import (
	"encoding/base64"
	"encoding/binary"
	"fmt"
	"hash/fnv"
	"math"
	"net/http"
	"sort"
)

// Embedding is the unit vector the fake returns for text with dims
// dimensions; it depends only on its arguments.
func Embedding(text string, dims int) []float32 {
	h := fnv.New64a()
	h.Write([]byte(text))
	x := h.Sum64() | 1
	v := make([]float32, dims)
	var sum float64
	for i := range v {
		x ^= x << 13
		x ^= x >> 7
		x ^= x << 17
		f := float64(int64(x>>11))/float64(1<<52) - 1
		v[i] = float32(f)
		sum += f * f
	}
	norm := 1 / max(math.Sqrt(sum), 1e-12)
	for i := range v {
		v[i] = float32(float64(v[i]) * norm)
	}
	return v
}

func (s *Server) embeddings(w http.ResponseWriter, m Model, req *request) {
	if !m.Embedding {
		writeError(w, http.StatusBadRequest, fmt.Sprintf("The model `%s` does not support embeddings.", m.ID), "")
		return
	}
	inputs := stringList(req.Input)
	if len(inputs) == 0 {
		writeError(w, http.StatusBadRequest, "'input' must be a non-empty string or array", "")
		return
	}
	type item struct {
		Object    string `json:"object"`
		Index     int    `json:"index"`
		Embedding any    `json:"embedding"`
	}
	data := make([]item, len(inputs))
	prompt := 0
	for i, in := range inputs {
		v := Embedding(in, m.Dims)
		var e any = v
		if req.EncodingFormat == "base64" {
			buf := make([]byte, 4*len(v))
			for j, f := range v {
				binary.LittleEndian.PutUint32(buf[4*j:], math.Float32bits(f))
			}
			e = base64.StdEncoding.EncodeToString(buf)
		}
		data[i] = item{Object: "embedding", Index: i, Embedding: e}
		prompt += words(in) + PerMessageTokens
	}
	out := map[string]any{"id": fmt.Sprintf("embd-%d", s.ids.Add(1)), "object": "list", "created": 1700000000, "model": m.ID, "data": data}
	if !s.cfg.NoUsage {
		out["usage"] = map[string]int{"prompt_tokens": prompt, "total_tokens": prompt}
	}
	writeJSON(w, http.StatusOK, out)
	s.embedTokens.Add(int64(prompt))
}

// rerank answers like llama.cpp's /v1/rerank: results by descending score.
// A model started without reranking gets llama.cpp's 501.
func (s *Server) rerank(w http.ResponseWriter, m Model, req *request) {
	if !m.Rerank {
		writeError(w, http.StatusNotImplemented, "This server does not support reranking. Start it with `--reranking`", "not_supported_error")
		return
	}
	type result struct {
		Index          int     `json:"index"`
		RelevanceScore float64 `json:"relevance_score"`
	}
	q := Embedding(req.Query, 16)
	results := make([]result, len(req.Documents))
	prompt := words(req.Query) + PerMessageTokens
	for i, d := range req.Documents {
		v := Embedding(d, 16)
		var dot float64
		for j := range v {
			dot += float64(v[j]) * float64(q[j])
		}
		results[i] = result{Index: i, RelevanceScore: dot}
		prompt += words(d) + PerMessageTokens
	}
	sort.SliceStable(results, func(i, j int) bool { return results[i].RelevanceScore > results[j].RelevanceScore })
	if req.TopN != nil && *req.TopN >= 0 && *req.TopN < len(results) {
		results = results[:*req.TopN]
	}
	out := map[string]any{"model": m.ID, "object": "list", "results": results}
	if !s.cfg.NoUsage {
		out["usage"] = map[string]int{"prompt_tokens": prompt, "total_tokens": prompt}
	}
	writeJSON(w, http.StatusOK, out)
	s.embedTokens.Add(int64(prompt))
}
