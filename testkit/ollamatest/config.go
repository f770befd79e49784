package ollamatest

import "time"

// Capability is what a model can do, as Ollama reports in /api/show.
type Capability string

// The capabilities Ollama checks before serving a request.
const (
	CapCompletion Capability = "completion"
	CapTools      Capability = "tools"
	CapInsert     Capability = "insert"
	CapVision     Capability = "vision"
	CapEmbedding  Capability = "embedding"
	CapThinking   Capability = "thinking"
)

// Model describes one installed model. Zero fields get the values of the
// tiny models of .ci/realollama.
type Model struct {
	Name              string       // e.g. "tiny" (normalised to tiny:latest)
	Capabilities      []Capability // default [completion]
	Family            string       // default "llama"
	ParameterSize     string       // default "136K"
	QuantizationLevel string       // default "F16"
	Size              int64        // bytes; default 288000
	ContextLength     int          // default 4096
	EmbeddingLength   int          // vector size for /api/embed; default 64
	// Digest is the manifest digest (hex, no "sha256:"); default derived from Name.
	// Copies share their source's digest, as in Ollama.
	Digest string
}

// Config sets up a Server. The zero value is usable: it serves the
// realollama model set with DefaultChunks chunks per reply and no delays.
type Config struct {
	Models  []Model  // installed models; nil means DefaultModels()
	Loaded  []string // models loaded at start (shown by /api/ps)
	Version string   // /api/version; default "0.17.4"

	Chunks           int           // content chunks per reply when num_predict is unset; default DefaultChunks
	ChunkDelay       time.Duration // pause before each content chunk
	FirstByteLatency time.Duration // pause before the first byte of a generation reply
	LoadDuration     time.Duration // extra pause when a request loads an unloaded model
	// PromptTokenCost is the prompt evaluation time per uncached prompt token
	// (prefixcache.go): time to first token is FirstByteLatency plus this
	// times the tokens not found in the slot's cache, and prompt_eval_duration
	// reports exactly that product. 0 (the default) costs nothing and
	// prompt_eval_duration is the measured time to the first token.
	PromptTokenCost time.Duration
	// CacheTokens bounds each slot's prompt cache, in tokens; 0 means the
	// model's context length. There are Parallel slots per model, or
	// DefaultCacheSlots when Parallel is 0.
	CacheTokens int

	// Parallel caps concurrent generations per model like OLLAMA_NUM_PARALLEL;
	// 0 means unlimited. Requests above the cap wait for a slot.
	Parallel int
	// MaxQueue caps how many requests may wait for a slot (OLLAMA_MAX_QUEUE);
	// more get 503 "server busy, ...". 0 means unlimited.
	MaxQueue int
	// MaxLoadedModels evicts the model expiring soonest when exceeded; 0 is unlimited.
	MaxLoadedModels int
	// KeepAlive is the default keep_alive; default 5m.
	KeepAlive time.Duration
}

// DefaultChunks is the reply length, in content chunks, when neither
// Config.Chunks, options.num_predict nor a fault's chunks is set.
const DefaultChunks = 10

// PerMessageTokens is added to prompt_eval_count for every message (and for
// every /api/embed input); see the package doc for the whole rule.
const PerMessageTokens = 4

// DefaultModels mirrors the models that realollama creates.
// tiny-alias is a copy of tiny, so they share a digest.
func DefaultModels() []Model {
	const tinyDigest = "25e3e2ca9fa8f3b4c0f1e2d3c4b5a6978877665544332211000f1e2d3c4b5a69"
	return []Model{
		{Name: "tiny", Capabilities: []Capability{CapCompletion}, Digest: tinyDigest},
		{Name: "tiny2", Capabilities: []Capability{CapCompletion, CapTools}},
		{Name: "tiny-fixed", Capabilities: []Capability{CapCompletion}},
		{Name: "tiny-embed", Capabilities: []Capability{CapEmbedding}},
		{Name: "tiny-alias", Capabilities: []Capability{CapCompletion}, Digest: tinyDigest},
	}
}

func (c *Config) withDefaults() {
	if c.Models == nil {
		c.Models = DefaultModels()
	}
	if c.Version == "" {
		c.Version = "0.17.4"
	}
	if c.Chunks <= 0 {
		c.Chunks = DefaultChunks
	}
	if c.KeepAlive == 0 {
		c.KeepAlive = 5 * time.Minute
	}
}
