package ollamatest

import (
	"math"
	"slices"
	"time"
)

// loadedModel is a model "in memory" as /api/ps shows it. Guarded by Server.mu.
type loadedModel struct {
	e         *entry
	expiresAt time.Time
}

// forever is what Ollama stores for a negative keep_alive.
const forever = time.Duration(math.MaxInt64)

// touch marks e loaded until now+keepAlive and reports whether it had to be
// loaded (so the caller simulates load time).
func (s *Server) touch(e *entry, keepAlive time.Duration, now time.Time) (wasLoaded bool) {
	key := e.name.key()
	s.mu.Lock()
	defer s.mu.Unlock()
	lm, ok := s.loaded[key]
	if ok && !lm.expiresAt.After(now) {
		ok = false
	}
	if !ok {
		lm = &loadedModel{e: e}
		s.loaded[key] = lm
		s.evictLocked(key, now)
	}
	lm.expiresAt = now.Add(keepAlive)
	return ok
}

// evictLocked drops the soonest-expiring other model while too many are loaded.
func (s *Server) evictLocked(keep string, now time.Time) {
	for k, lm := range s.loaded {
		if !lm.expiresAt.After(now) && k != keep {
			delete(s.loaded, k)
		}
	}
	for s.cfg.MaxLoadedModels > 0 && len(s.loaded) > s.cfg.MaxLoadedModels {
		victim, soonest := "", time.Time{}
		for k, lm := range s.loaded {
			if k != keep && (victim == "" || lm.expiresAt.Before(soonest)) {
				victim, soonest = k, lm.expiresAt
			}
		}
		if victim == "" {
			return
		}
		delete(s.loaded, victim)
	}
}

func (s *Server) unload(e *entry) {
	s.mu.Lock()
	delete(s.loaded, e.name.key())
	s.mu.Unlock()
}

// SetLoaded replaces the set of loaded models; each expires after the
// default keep_alive. Unknown names are ignored.
func (s *Server) SetLoaded(names ...string) {
	now := time.Now()
	cat := s.catalog.Load()
	s.mu.Lock()
	defer s.mu.Unlock()
	clear(s.loaded)
	for _, n := range names {
		if e, ok := cat.byKey[nameKey(n)]; ok {
			s.loaded[e.name.key()] = &loadedModel{e: e, expiresAt: now.Add(s.cfg.KeepAlive)}
		}
	}
}

// Loaded lists the short names of the models currently loaded, sorted.
func (s *Server) Loaded() []string {
	now := time.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []string
	for _, lm := range s.loaded {
		if lm.expiresAt.After(now) {
			out = append(out, lm.e.short)
		}
	}
	slices.Sort(out)
	return out
}

type processModel struct {
	Name          string       `json:"name"`
	Model         string       `json:"model"`
	Size          int64        `json:"size"`
	Digest        string       `json:"digest"`
	Details       modelDetails `json:"details"`
	ExpiresAt     time.Time    `json:"expires_at"`
	SizeVRAM      int64        `json:"size_vram"`
	ContextLength int          `json:"context_length"`
}

func (s *Server) psModels() []processModel {
	now := time.Now()
	out := []processModel{}
	s.mu.Lock()
	for _, lm := range s.loaded {
		if !lm.expiresAt.After(now) {
			continue
		}
		e := lm.e
		out = append(out, processModel{Name: e.short, Model: e.short, Size: e.Size, Digest: e.Digest,
			Details: e.details(), ExpiresAt: lm.expiresAt, ContextLength: e.ContextLength})
	}
	s.mu.Unlock()
	slices.SortStableFunc(out, func(a, b processModel) int { return b.ExpiresAt.Compare(a.ExpiresAt) })
	return out
}
