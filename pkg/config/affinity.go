package config

import "time"

// Routing strategies (routing.strategy; docs/routing.md).
const (
	// StrategyPrefix: loaded model first, then the backend holding the
	// longest cached prompt prefix or the request's session, within
	// routing.affinity.load_bound of the least loaded; else the least
	// loaded (requests, then tokens in flight).
	StrategyPrefix = "prefix"
	// StrategyLeastLoaded: loaded model first, then fewest in flight.
	StrategyLeastLoaded = "least_loaded"
	// StrategyRoundRobin: the next candidate with a free slot in turn.
	StrategyRoundRobin = "round_robin"
	// StrategySession: as prefix, on explicit session hints only
	// (X-Session-Id, OpenAI's prompt_cache_key or user).
	StrategySession = "session"
)

// Affinity tunes cache-affine routing: the index of which backend holds
// which prompt prefixes, its bound, and its sharing between replicas.
type Affinity struct {
	// Share publishes this replica's index inserts to the others on
	// drover.affinity and applies theirs (default true; needs nats.url).
	Share *bool `yaml:"share"`
	// MaxEntries bounds the index: block hashes and sessions over all
	// backends and models, about 80 bytes each (default 65536: 5 MiB,
	// 16 MiB of prompt text in 256-byte blocks, the slots of 256 Ollama
	// backends with 4 slots of 4096 tokens).
	MaxEntries int `yaml:"max_entries"`
	// ContextTokens is a backend slot's context length, Ollama's num_ctx
	// (default 4096, Ollama's own on a GPU under 24 GiB; it picks 32k and
	// 256k on larger ones, or OLLAMA_CONTEXT_LENGTH; `ollama ps` shows
	// it): each (backend, model) keeps
	// at most max_concurrency × context_tokens × 4 bytes of prompt in the
	// index, what its slots can hold (256 blocks of 256 bytes with 4
	// slots), so the index does not send requests to caches the backend
	// has long overwritten.
	ContextTokens int `yaml:"context_tokens"`
	// LoadBound is how many more requests in flight (fleet-wide) the
	// backend holding the prefix may carry than the least loaded
	// candidate before the request goes to the least loaded instead
	// (default 2: half of Ollama's 4 slots; 0 takes the default).
	LoadBound int `yaml:"load_bound"`
	// LoadBoundTokens is the same bound in estimated tokens in flight on
	// the backend, prompt and output (default 8192: two requests at
	// Ollama's 4096-token context).
	LoadBoundTokens int64 `yaml:"load_bound_tokens"`
	// BlockBytes is the size of a prompt block, a multiple of 8 from 64
	// (default 256 bytes, about 64 tokens).
	BlockBytes int `yaml:"block_bytes"`
	// TTL forgets an entry this long after it was last used (default 5m,
	// Ollama's keep_alive: an idle model is unloaded with its cache).
	TTL time.Duration `yaml:"ttl"`
	// ShareInterval spaces this replica's messages on drover.affinity
	// (default 50ms: at most 20 a second, each batching every insert in
	// between).
	ShareInterval time.Duration `yaml:"share_interval"`
	// SlotShareInterval spaces messages that carry slot events (takes,
	// releases, warm lines' joins and leaves; default 5ms, at most
	// ShareInterval): the others hear of a grant this late at most, so
	// two replicas rarely send one group's requests into one warm slot.
	SlotShareInterval time.Duration `yaml:"slot_share_interval"`
}

// DefaultAffinity is routing.affinity's defaults.
func DefaultAffinity() Affinity {
	share := true
	return Affinity{Share: &share, MaxEntries: 65536, ContextTokens: 4096, LoadBound: 2, LoadBoundTokens: 8192, BlockBytes: 256,
		TTL: 5 * time.Minute, ShareInterval: 50 * time.Millisecond, SlotShareInterval: 5 * time.Millisecond}
}

// TargetBlocks is how many blocks of one (backend, model) with slots
// slots the index keeps: what the slots can hold.
func (a Affinity) TargetBlocks(slots int) int {
	return max(1, slots*a.ContextTokens*4/a.BlockBytes)
}

// Sharing reports whether routing.affinity.share is on.
func (a Affinity) Sharing() bool { return a.Share == nil || *a.Share }

func (r Routing) validateAffinity(bad func(key, format string, args ...any)) {
	switch r.Strategy {
	case StrategyPrefix, StrategyLeastLoaded, StrategyRoundRobin, StrategySession:
	default:
		bad("routing.strategy", "must be prefix, least_loaded, round_robin or session, got %q", r.Strategy)
	}
	a := r.Affinity
	if a.MaxEntries < 0 {
		bad("routing.affinity.max_entries", "must be positive, got %d", a.MaxEntries)
	}
	if a.ContextTokens < 0 {
		bad("routing.affinity.context_tokens", "must be positive, got %d", a.ContextTokens)
	}
	if a.LoadBound < 0 {
		bad("routing.affinity.load_bound", "must not be negative, got %d", a.LoadBound)
	}
	if a.LoadBoundTokens < 0 {
		bad("routing.affinity.load_bound_tokens", "must not be negative, got %d", a.LoadBoundTokens)
	}
	if a.BlockBytes < 64 || a.BlockBytes%8 != 0 || a.BlockBytes > 1<<20 {
		bad("routing.affinity.block_bytes", "must be a multiple of 8 from 64 to 1048576, got %d", a.BlockBytes)
	}
	if a.TTL < 0 {
		bad("routing.affinity.ttl", "must be positive, got %s", a.TTL)
	}
	if a.ShareInterval < time.Millisecond {
		bad("routing.affinity.share_interval", "must be at least 1ms, got %s", a.ShareInterval)
	}
	if a.SlotShareInterval < time.Millisecond || a.SlotShareInterval > a.ShareInterval {
		bad("routing.affinity.slot_share_interval", "must be from 1ms to share_interval (%s), got %s", a.ShareInterval, a.SlotShareInterval)
	}
}
