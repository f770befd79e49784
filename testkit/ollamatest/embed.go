package ollamatest

import (
	"encoding/json"
	"fmt"
	"hash/fnv"
	"math"
	"net/http"
	"strconv"
	"time"

	"github.com/droverhq/drover/pkg/jsonw"
)

type embedRequest struct {
	Model      string    `json:"model"`
	Input      any       `json:"input"`
	KeepAlive  *duration `json:"keep_alive"`
	Dimensions int       `json:"dimensions"`
	Fake       *Fault    `json:"fake"`
}

type embeddingRequest struct {
	Model     string    `json:"model"`
	Prompt    string    `json:"prompt"`
	KeepAlive *duration `json:"keep_alive"`
	Fake      *Fault    `json:"fake"`
}

// Embedding is the unit vector the fake returns for text with dims
// dimensions; it depends only on its arguments.
func Embedding(text string, dims int) []float32 {
	h := fnv.New64a()
	h.Write([]byte(text))
	x := h.Sum64() | 1
	v := make([]float32, dims)
	var sum float64
	for i := range v {
		x ^= x << 13 // xorshift64
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

func appendVector(b []byte, v []float32) []byte {
	b = append(b, '[')
	for i, f := range v {
		if i > 0 {
			b = append(b, ',')
		}
		b = strconv.AppendFloat(b, float64(f), 'g', -1, 32)
	}
	return append(b, ']')
}

// embedStart is the shared front half of /api/embed and /api/embeddings:
// fault, model lookup, slot, load. It returns nil when it has answered.
func (s *Server) embedStart(w http.ResponseWriter, r *http.Request, model string, ka *duration) (*entry, func()) {
	e := s.lookup(model)
	if e == nil {
		writeError(w, http.StatusNotFound, fmt.Sprintf("model %q not found, try pulling it first", model))
		return nil, nil
	}
	release, ok := s.acquire(w, r, e)
	if !ok {
		return nil, nil
	}
	keep := s.keepAlive(ka)
	if !s.load(r, e, keep) {
		release()
		return nil, nil
	}
	return e, func() {
		if keep == 0 {
			s.unload(e)
		}
		release()
	}
}

func (s *Server) handleEmbed(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	var req embedRequest
	if !decode(w, r, &req, "EmbedRequest") || !s.applyFault(w, r, req.Fake) || s.serverFailure(w) {
		return
	}
	var input []string
	switch in := req.Input.(type) {
	case string:
		if in != "" {
			input = append(input, in)
		}
	case []any:
		for _, v := range in {
			str, ok := v.(string)
			if !ok {
				writeError(w, http.StatusBadRequest, "invalid input type")
				return
			}
			input = append(input, str)
		}
	default:
		if req.Input != nil {
			writeError(w, http.StatusBadRequest, "invalid input type")
			return
		}
	}
	if req.Model == "" {
		writeError(w, http.StatusInternalServerError, "unqualified name: registry.ollama.ai/library/!MISSING!:latest")
		return
	}
	e, done := s.embedStart(w, r, req.Model, req.KeepAlive)
	if e == nil {
		return
	}
	defer done()
	loaded := time.Now()
	b := append([]byte(`{"model":`), jsonw.AppendString(nil, req.Model)...)
	if len(input) == 0 {
		writeRaw(w, http.StatusOK, append(b, `,"embeddings":[]}`...))
		return
	}
	if !s.sleep(r.Context(), time.Duration(s.latency.Load())) {
		return
	}
	dims := e.EmbeddingLength
	if req.Dimensions > 0 && req.Dimensions < dims {
		dims = req.Dimensions
	}
	b = append(b, `,"embeddings":[`...)
	tokens := 0
	for i, text := range input {
		if i > 0 {
			b = append(b, ',')
		}
		b = appendVector(b, Embedding(text, dims))
		tokens += countWords(text) + PerMessageTokens
	}
	b = append(b, ']')
	b = appendIntField(b, "total_duration", int64(max(time.Since(start), 1)))
	b = appendIntField(b, "load_duration", int64(max(loaded.Sub(start), 1)))
	b = appendIntField(b, "prompt_eval_count", int64(tokens))
	writeRaw(w, http.StatusOK, append(b, '}'))
	if r.Context().Err() == nil {
		s.stats.embedPrompt.Add(int64(tokens))
	}
}

func (s *Server) handleEmbeddings(w http.ResponseWriter, r *http.Request) {
	var req embeddingRequest
	if !decode(w, r, &req, "EmbeddingRequest") || !s.applyFault(w, r, req.Fake) || s.serverFailure(w) {
		return
	}
	if !parseName(req.Model).valid() {
		writeError(w, http.StatusBadRequest, "model is required")
		return
	}
	e, done := s.embedStart(w, r, req.Model, req.KeepAlive)
	if e == nil {
		return
	}
	defer done()
	if req.Prompt == "" {
		writeRaw(w, http.StatusOK, []byte(`{"embedding":[]}`))
		return
	}
	if !s.sleep(r.Context(), time.Duration(s.latency.Load())) {
		return
	}
	v := Embedding(req.Prompt, e.EmbeddingLength)
	f := make([]float64, len(v))
	for i, x := range v {
		f[i] = float64(x)
	}
	body, _ := json.Marshal(map[string][]float64{"embedding": f})
	writeRaw(w, http.StatusOK, body)
}
