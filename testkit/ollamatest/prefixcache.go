package ollamatest

import (
	"container/list"
	"context"
	"strings"
	"sync"
	"time"
)

// Prompt caching, as Ollama's runner does it: each of a model's parallel
// slots keeps the KV cache of what it last processed, a request takes the
// free slot whose cache shares the longest prefix with its prompt, and only
// the rest of the prompt is evaluated. The fake tokenizes as it counts (see
// the package doc): every message starts with PerMessageTokens marker
// tokens (the first names the role) followed by its words, so a follow-up
// turn's tokens extend its predecessor's. Tokens are hashed in blocks of
// CacheBlockTokens, each block's hash chained over everything before it;
// a slot holds an LRU of block hashes, bounded by Config.CacheTokens.
//
// Measured with real Ollama 0.17.4 (the tiny model of .ci/realollama, 4
// slots; services/proxy/conformance/affinity_test.go sends the same
// 1,756-token chat twice to an idle server): the repeat reports the same
// prompt_eval_count, while its prompt_eval_duration falls from 1.1-3.9 s
// to 1.3-27 ms (docs/routing-bench.md has every run). The fake does the
// same: prompt_eval_count is the whole prompt, prompt_eval_duration is
// Config.PromptTokenCost per uncached token.
//
// Where the fake is simpler than llama.cpp: a llama.cpp slot holds exactly
// one sequence, generated tokens included, and keeps the common prefix when
// a new prompt overwrites it; the fake caches prompts only, and an LRU of
// one context's worth of blocks may hold parts of several sequences, so
// with the default bound it caches a little more generously. Set CacheTokens to about one conversation's length for
// Ollama's behaviour. At least one token is always evaluated, as llama.cpp
// re-evaluates the last prompt token to get its logits.

// CacheBlockTokens is the block size of the fake's prompt cache: a prefix
// is reused in whole blocks only.
const CacheBlockTokens = 16

// DefaultCacheSlots is the number of prompt-cache slots per model when
// Config.Parallel is 0 (unlimited concurrency): Ollama's own default of 4
// parallel slots before it became 1. Requests beyond that many share slots.
const DefaultCacheSlots = 4

// promptHash tokenizes and hashes a prompt: FNV-1a over every token's bytes
// with a separator, the running hash recorded at each block boundary.
type promptHash struct {
	h      uint64
	tokens int
	blocks []uint64
}

const (
	fnvOffset = 14695981039346656037
	fnvPrime  = 1099511628211
)

func newPromptHash() *promptHash { return &promptHash{h: fnvOffset} }

func (p *promptHash) token(s string) {
	h := p.h
	for i := 0; i < len(s); i++ {
		h = (h ^ uint64(s[i])) * fnvPrime
	}
	p.h = (h ^ 0xff) * fnvPrime // separator: "ab" "c" differs from "a" "bc"
	p.tokens++
	if p.tokens%CacheBlockTokens == 0 {
		p.blocks = append(p.blocks, p.h)
	}
}

// marker feeds the PerMessageTokens tokens that open a message (or a
// non-text part such as an image, named by tag).
func (p *promptHash) marker(tag string) {
	p.token("<|" + tag + "|>")
	for range PerMessageTokens - 1 {
		p.token("<|>")
	}
}

// words feeds s's whitespace-separated words, one token each, counted as
// countWords counts them.
func (p *promptHash) words(s string) {
	start := -1
	for i := 0; i <= len(s); i++ {
		space := i == len(s)
		if !space {
			c := s[i]
			space = c == ' ' || c == '\n' || c == '\t' || c == '\r' || c == '\v' || c == '\f'
		}
		switch {
		case space && start >= 0:
			p.token(s[start:i])
			start = -1
		case !space && start < 0:
			start = i
		}
	}
}

// message feeds one message: its marker, then its words.
func (p *promptHash) message(role, content string) {
	p.marker(role)
	p.words(content)
}

// promptCache is one model's cache slots. mu guards slots.
type promptCache struct {
	mu       sync.Mutex
	slots    []cacheSlot
	capacity int // blocks per slot
}

type cacheSlot struct {
	busy   int // requests using the slot now
	blocks map[uint64]*list.Element
	order  *list.List // of uint64 block hashes, least recently used at the front
}

func newPromptCache(slots, capacityTokens int) *promptCache {
	c := &promptCache{slots: make([]cacheSlot, slots), capacity: max(capacityTokens/CacheBlockTokens, 1)}
	for i := range c.slots {
		c.slots[i] = cacheSlot{blocks: map[uint64]*list.Element{}, order: list.New()}
	}
	return c
}

// matched is how many of blocks, from the first, the slot holds.
func (sl *cacheSlot) matched(blocks []uint64) int {
	for i, h := range blocks {
		if _, ok := sl.blocks[h]; !ok {
			return i
		}
	}
	return len(blocks)
}

func (sl *cacheSlot) insert(blocks []uint64, capacity int) {
	for _, h := range blocks {
		if el, ok := sl.blocks[h]; ok {
			sl.order.MoveToBack(el)
			continue
		}
		sl.blocks[h] = sl.order.PushBack(h)
		for sl.order.Len() > capacity {
			old := sl.order.Remove(sl.order.Front()).(uint64)
			delete(sl.blocks, old)
		}
	}
}

// take picks the slot for a prompt as Ollama's runners do by default
// (findLongestCacheSlot in runner/llamarunner/cache.go and
// runner/ollamarunner/cache.go of v0.17.4; OLLAMA_MULTIUSER_CACHE unset): among free slots the one holding the
// longest prefix, ties to the lowest-numbered, so a miss overwrites slot 0
// and the others keep their prompts. When every slot is busy (Parallel 0
// only) it takes the best of all. It returns the slot and how many prompt
// tokens it has cached.
func (c *promptCache) take(blocks []uint64) (slot, cachedTokens int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	best, bestMatch, free := -1, -1, false
	for i := range c.slots {
		sl := &c.slots[i]
		isFree := sl.busy == 0
		if free && !isFree {
			continue
		}
		if m := sl.matched(blocks); best < 0 || (isFree && !free) || m > bestMatch {
			best, bestMatch, free = i, m, isFree
		}
	}
	c.slots[best].busy++
	return best, bestMatch * CacheBlockTokens
}

// processed records that slot now holds blocks (the prompt was evaluated).
func (c *promptCache) processed(slot int, blocks []uint64) {
	c.mu.Lock()
	c.slots[slot].insert(blocks, c.capacity)
	c.mu.Unlock()
}

func (c *promptCache) release(slot int) {
	c.mu.Lock()
	c.slots[slot].busy--
	c.mu.Unlock()
}

// promptCache returns e's cache, made on first use.
func (s *Server) promptCache(e *entry) *promptCache {
	ms := s.slots(e.name.key())
	ms.cacheOnce.Do(func() {
		n := s.cfg.Parallel
		if n <= 0 {
			n = DefaultCacheSlots
		}
		tokens := s.cfg.CacheTokens
		if tokens <= 0 {
			tokens = e.ContextLength
		}
		ms.cache = newPromptCache(n, tokens)
	})
	return ms.cache
}

// evalPrompt is prompt evaluation: it takes a cache slot, waits the fixed
// latency plus PromptTokenCost per uncached token, and records the prompt
// in the slot. It returns the slot's release and false when the client
// left or the server closed first (release already done then).
func (s *Server) evalPrompt(ctx context.Context, j *job) (release func(), ok bool) {
	var blocks []uint64
	if j.prompt != nil {
		blocks = j.prompt.blocks
	}
	c := s.promptCache(j.e)
	slot, cached := c.take(blocks)
	j.cached = min(cached, max(j.plan.promptTokens-1, 0)) // at least one token is evaluated
	j.evalCost = s.cfg.PromptTokenCost * time.Duration(j.plan.promptTokens-j.cached)
	if !s.sleep(ctx, time.Duration(s.latency.Load())+j.evalCost) {
		c.release(slot)
		return nil, false
	}
	c.processed(slot, blocks)
	return func() { c.release(slot) }, true
}

// CachedPromptTokens is the sum, over the chat and generate replies that
// Counters counts, of the prompt tokens served from a slot's cache instead
// of evaluated: with Counters().PromptEvalCount it gives the token
// cache-hit rate.
func (s *Server) CachedPromptTokens() int64 { return s.cachedPrompt.Load() }

// generatePromptHash tokenizes a generate prompt as the fake counts it: the
// system message, if any, then the prompt followed by the suffix.
func generatePromptHash(system, prompt, suffix string) *promptHash {
	ph := newPromptHash()
	if system != "" {
		ph.message("system", system)
	}
	ph.message("user", prompt)
	ph.words(suffix)
	return ph
}

// imageURL is an OpenAI image part's URL (checkImagePart has validated it).
func imageURL(part map[string]any) string {
	if m, ok := part["image_url"].(map[string]any); ok {
		u, _ := m["url"].(string)
		return u
	}
	u, _ := part["image_url"].(string)
	return u
}

// toolCallsText is what a tool-call-only message contributes to the hash.
func toolCallsText(calls []openaiToolCall) string {
	var b strings.Builder
	for _, tc := range calls {
		b.WriteString(tc.Function.Name)
		b.WriteByte('(')
		b.WriteString(tc.Function.Arguments)
		b.WriteByte(')')
	}
	return b.String()
}
