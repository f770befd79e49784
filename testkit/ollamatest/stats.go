package ollamatest

import (
	"sync"
	"sync/atomic"
)

// routes counted by Requests. Index into stats.routes.
var routeNames = []string{
	"/", "/api/version", "/api/tags", "/api/ps", "/api/show", "/api/chat", "/api/generate",
	"/api/embed", "/api/embeddings", "/api/pull", "/api/push", "/api/create", "/api/copy",
	"/api/delete", "/api/blobs", "/v1/chat/completions", "/v1/completions", "/v1/embeddings",
	"/v1/models", "other",
}

var routeIndex = func() map[string]int {
	m := make(map[string]int, len(routeNames))
	for i, n := range routeNames {
		m[n] = i
	}
	return m
}()

// stats holds the counters; every field is atomic or immutable after New.
type stats struct {
	routes      []atomic.Int64
	promptEval  atomic.Int64
	eval        atomic.Int64
	embedPrompt atomic.Int64
	completed   atomic.Int64
	cut         atomic.Int64
	models      sync.Map // model key -> *modelSlots
}

// modelSlots is the per-model concurrency state: the Parallel semaphore and
// the in-flight gauges. Created once per model key and never removed, so the
// counters survive a model being removed and added again.
type modelSlots struct {
	sem         chan struct{} // nil when Parallel is 0
	cacheOnce   sync.Once
	cache       *promptCache // the slots' prompt caches (prefixcache.go), made by cacheOnce
	inFlight    atomic.Int64
	maxInFlight atomic.Int64
}

func (s *Server) slots(key string) *modelSlots {
	if v, ok := s.stats.models.Load(key); ok {
		return v.(*modelSlots)
	}
	ms := &modelSlots{}
	if s.cfg.Parallel > 0 {
		ms.sem = make(chan struct{}, s.cfg.Parallel)
	}
	v, _ := s.stats.models.LoadOrStore(key, ms)
	return v.(*modelSlots)
}

func (ms *modelSlots) enter() {
	n := ms.inFlight.Add(1)
	for {
		m := ms.maxInFlight.Load()
		if n <= m || ms.maxInFlight.CompareAndSwap(m, n) {
			return
		}
	}
}

func (ms *modelSlots) leave() { ms.inFlight.Add(-1) }

// Requests reports how many requests hit route, a path such as "/api/tags"
// ("/api/blobs" for every blob path, "other" for unknown paths).
func (s *Server) Requests(route string) int64 {
	i, ok := routeIndex[route]
	if !ok {
		return 0
	}
	return s.stats.routes[i].Load()
}

// Counters is a snapshot of the token and outcome totals.
type Counters struct {
	// PromptEvalCount and EvalCount sum the values reported in chat/generate
	// final chunks (or non-streamed replies) whose write succeeded.
	PromptEvalCount int64
	EvalCount       int64
	// EmbedPromptEvalCount sums prompt_eval_count of /api/embed replies.
	EmbedPromptEvalCount int64
	// Completed counts chat/generate replies whose final chunk was written.
	Completed int64
	// Cut counts streams cut by fail_after_chunks.
	Cut int64
}

// Counters returns the current totals.
func (s *Server) Counters() Counters {
	return Counters{
		PromptEvalCount:      s.stats.promptEval.Load(),
		EvalCount:            s.stats.eval.Load(),
		EmbedPromptEvalCount: s.stats.embedPrompt.Load(),
		Completed:            s.stats.completed.Load(),
		Cut:                  s.stats.cut.Load(),
	}
}

// InFlight reports the generations (chat, generate, embed) running now on model.
func (s *Server) InFlight(model string) int64 { return s.slots(nameKey(model)).inFlight.Load() }

// MaxInFlight reports the most generations ever seen running at once on model.
func (s *Server) MaxInFlight(model string) int64 {
	return s.slots(nameKey(model)).maxInFlight.Load()
}

// ResetCounters zeroes the request, token and max-in-flight counters.
func (s *Server) ResetCounters() {
	for i := range s.stats.routes {
		s.stats.routes[i].Store(0)
	}
	s.stats.promptEval.Store(0)
	s.stats.eval.Store(0)
	s.stats.embedPrompt.Store(0)
	s.stats.completed.Store(0)
	s.stats.cut.Store(0)
	s.cachedPrompt.Store(0)
	s.stats.models.Range(func(_, v any) bool {
		ms := v.(*modelSlots)
		ms.maxInFlight.Store(ms.inFlight.Load())
		return true
	})
}
