package ollamatest

import (
	"encoding/base64"
	"encoding/binary"
	"fmt"
	"math"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/droverhq/drover/pkg/jsonw"
)

// openaiEmbedRequest is Ollama's openai.EmbedRequest plus the fake field.
type openaiEmbedRequest struct {
	Input          any          `json:"input"`
	Model          string       `json:"model"`
	Dimensions     int          `json:"dimensions"`
	EncodingFormat string       `json:"encoding_format"`
	Fake           *openaiFault `json:"fake"`
}

// handleOpenAIEmbeddings is /v1/embeddings: the middleware's checks, then
// /api/embed's, then openai.ToEmbeddingList. Vectors are Embedding's.
func (s *Server) handleOpenAIEmbeddings(w http.ResponseWriter, r *http.Request, _ *openaiFault) {
	var req openaiEmbedRequest
	if !decodeOpenAI(w, r, &req) {
		return
	}
	ew := openaiErrors(w)
	if !s.applyFault(ew, r, req.Fake.fault()) {
		return
	}
	base64Format := strings.EqualFold(req.EncodingFormat, "base64")
	if req.EncodingFormat != "" && !base64Format && !strings.EqualFold(req.EncodingFormat, "float") {
		badOpenAIRequest(w, fmt.Sprintf("Invalid value for 'encoding_format' = %s. Supported values: ['float', 'base64'].", req.EncodingFormat))
		return
	}
	if arr, ok := req.Input.([]any); req.Input == nil || ok && len(arr) == 0 {
		badOpenAIRequest(w, "invalid input")
		return
	}

	// From here on Ollama's EmbedHandler answers, through the middleware.
	if s.serverFailure(ew) {
		return
	}
	var input []string
	switch in := req.Input.(type) {
	case string:
		input = []string{in} // "" is embedded too: the middleware sends [""]
	case []any:
		for _, v := range in {
			str, ok := v.(string)
			if !ok {
				writeError(ew, http.StatusBadRequest, "invalid input type")
				return
			}
			input = append(input, str)
		}
	default:
		writeError(ew, http.StatusBadRequest, "invalid input type")
		return
	}
	if req.Model == "" {
		writeError(ew, http.StatusInternalServerError, "unqualified name: registry.ollama.ai/library/!MISSING!:latest")
		return
	}
	e, done := s.embedStart(ew, r, req.Model, nil)
	if e == nil {
		return
	}
	defer done()
	if !s.sleep(r.Context(), time.Duration(s.latency.Load())) {
		return
	}
	dims := e.EmbeddingLength
	if req.Dimensions > 0 && req.Dimensions < dims {
		dims = req.Dimensions
	}
	b := append(make([]byte, 0, 64+len(input)*dims*12), `{"object":"list","data":[`...)
	tokens := 0
	for i, text := range input {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, `{"object":"embedding","embedding":`...)
		v := Embedding(text, dims)
		if base64Format {
			b = appendBase64Floats(b, v)
		} else {
			b = appendJSONFloats(b, v)
		}
		b = append(b, `,"index":`...)
		b = strconv.AppendInt(b, int64(i), 10)
		b = append(b, '}')
		tokens += countWords(text) + PerMessageTokens
	}
	b = append(b, `],"model":`...)
	b = jsonw.AppendString(b, req.Model)
	b = append(b, `,"usage":{"prompt_tokens":`...)
	b = strconv.AppendInt(b, int64(tokens), 10)
	b = append(b, `,"total_tokens":`...)
	b = strconv.AppendInt(b, int64(tokens), 10)
	w.Header().Set("Content-Type", "application/json")
	writeRaw(w, http.StatusOK, append(b, '}', '}', '\n'))
	if r.Context().Err() == nil {
		s.stats.embedPrompt.Add(int64(tokens))
	}
}

// appendJSONFloats encodes v as encoding/json encodes a []float32.
func appendJSONFloats(b []byte, v []float32) []byte {
	b = append(b, '[')
	for i, f := range v {
		if i > 0 {
			b = append(b, ',')
		}
		format := byte('f')
		if abs := float32(math.Abs(float64(f))); abs != 0 && (abs < 1e-6 || abs >= 1e21) {
			format = 'e'
		}
		b = strconv.AppendFloat(b, float64(f), format, -1, 32)
		if n := len(b); format == 'e' && n >= 4 && b[n-4] == 'e' && b[n-3] == '-' && b[n-2] == '0' {
			b[n-2] = b[n-1] // e-09 -> e-9, as encoding/json does
			b = b[:n-1]
		}
	}
	return append(b, ']')
}

// appendBase64Floats is openai.floatsToBase64 as a JSON string: the
// little-endian float32s, standard base64.
func appendBase64Floats(b []byte, v []float32) []byte {
	raw := make([]byte, 0, 4*len(v))
	for _, f := range v {
		raw = binary.LittleEndian.AppendUint32(raw, math.Float32bits(f))
	}
	b = append(b, '"')
	b = base64.StdEncoding.AppendEncode(b, raw)
	return append(b, '"')
}
