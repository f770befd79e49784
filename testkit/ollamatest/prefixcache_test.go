package ollamatest

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"
)

// words returns n distinct words starting at from: "w<from> w<from+1> ...".
func words(from, n int) string {
	w := make([]string, n)
	for i := range w {
		w[i] = fmt.Sprintf("w%d", from+i)
	}
	return strings.Join(w, " ")
}

type chatMsg struct {
	Role    string `json:"role"`
	Content string `json:"content"`
}

// evalCounts sends a non-streamed chat and returns its prompt_eval_count
// and prompt_eval_duration.
func (e *env) evalCounts(msgs []chatMsg) (count, dur int64) {
	e.t.Helper()
	body, _ := json.Marshal(map[string]any{"model": "tiny", "stream": false, "messages": msgs})
	r := e.post("/api/chat", string(body))
	if r.status != 200 {
		e.t.Fatalf("chat = %d %s", r.status, r.body)
	}
	var out struct {
		Count int64 `json:"prompt_eval_count"`
		Dur   int64 `json:"prompt_eval_duration"`
	}
	if err := json.Unmarshal(r.body, &out); err != nil {
		e.t.Fatal(err)
	}
	return out.Count, out.Dur
}

// cost is a PromptTokenCost small enough to keep tests fast; durations are
// compared as reported, never timed.
const cost = time.Microsecond

func TestPromptCacheRepeatAndFollowUp(t *testing.T) {
	e := start(t, Config{PromptTokenCost: cost, Parallel: 1})
	conv := []chatMsg{{"system", words(0, 400)}, {"user", words(1000, 10)}}
	const prompt = 404 + 14
	const cachedBlocks = prompt / CacheBlockTokens * CacheBlockTokens // 416

	count, dur := e.evalCounts(conv)
	if count != prompt || dur != int64(prompt*cost) {
		t.Fatalf("cold: prompt_eval_count %d, duration %d; want %d, %d", count, dur, prompt, prompt*cost)
	}
	count, dur = e.evalCounts(conv)
	if count != prompt || dur != int64((prompt-cachedBlocks)*cost) {
		t.Fatalf("repeat: prompt_eval_count %d, duration %d; want %d (the whole prompt), %d (the uncached tail)",
			count, dur, prompt, (prompt-cachedBlocks)*cost)
	}
	// The next turn extends the chain: only the blocks past the old prompt are evaluated.
	next := append(conv, chatMsg{"assistant", words(2000, 20)}, chatMsg{"user", words(3000, 10)})
	const nextPrompt = prompt + 24 + 14
	count, dur = e.evalCounts(next)
	if count != nextPrompt || dur != int64((nextPrompt-cachedBlocks)*cost) {
		t.Fatalf("follow-up: prompt_eval_count %d, duration %d; want %d, %d", count, dur, nextPrompt, (nextPrompt-cachedBlocks)*cost)
	}
	// A different system prompt shares nothing.
	if _, dur = e.evalCounts([]chatMsg{{"system", words(5000, 400)}, {"user", words(1000, 10)}}); dur != int64(prompt*cost) {
		t.Fatalf("other system prompt: duration %d; want %d (cold)", dur, prompt*cost)
	}
	c := e.s.Counters()
	if want := int64(cachedBlocks * 2); e.s.CachedPromptTokens() != want || c.PromptEvalCount != 3*prompt+nextPrompt {
		t.Fatalf("counters: cached %d of %d; want %d of %d", e.s.CachedPromptTokens(), c.PromptEvalCount, want, 3*prompt+nextPrompt)
	}
	e.s.ResetCounters()
	if e.s.CachedPromptTokens() != 0 {
		t.Fatal("ResetCounters left the cached-token count")
	}
}

func TestPromptCacheSlots(t *testing.T) {
	a := []chatMsg{{"system", words(0, 400)}}
	b := []chatMsg{{"system", words(10000, 400)}}
	const prompt = 404
	cold := int64(prompt * cost)
	cases := []struct {
		name        string
		cfg         Config
		wantAgainA  int64 // A's prompt_eval_duration after A then B
		description string
	}{
		{"a miss overwrites the lowest free slot", Config{PromptTokenCost: cost, Parallel: 2, CacheTokens: 480}, cold, "B ties at no match and takes slot 0 as Ollama does, evicting A"},
		{"one slot of one conversation", Config{PromptTokenCost: cost, Parallel: 1, CacheTokens: 480}, cold, "B evicts A's oldest blocks, so A's chain is broken at its first block"},
		{"one slot holding both", Config{PromptTokenCost: cost, Parallel: 1, CacheTokens: 1024}, int64(prompt%CacheBlockTokens) * int64(cost), "the LRU holds both prompts"},
		{"unlimited parallel uses default slots", Config{PromptTokenCost: cost}, int64(prompt%CacheBlockTokens) * int64(cost), "DefaultCacheSlots slots"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			e := start(t, c.cfg)
			e.evalCounts(a)
			e.evalCounts(b)
			if _, dur := e.evalCounts(a); dur != c.wantAgainA {
				t.Fatalf("A again: prompt_eval_duration %d, want %d (%s)", dur, c.wantAgainA, c.description)
			}
		})
	}
}

func TestPromptCacheTakeSkipsBusySlots(t *testing.T) {
	c := newPromptCache(2, 4096)
	a, b := []uint64{1, 2, 3}, []uint64{7, 8}
	slot, cached := c.take(a)
	if slot != 0 || cached != 0 {
		t.Fatalf("empty cache: slot %d, %d cached; want slot 0 (the lowest), 0", slot, cached)
	}
	c.processed(slot, a)
	// The slot holding A is busy: B gets the other one.
	other, cached := c.take(b)
	if other != 1 || cached != 0 {
		t.Fatalf("slot 0 busy: took slot %d with %d cached; want slot 1, 0 cached", other, cached)
	}
	c.processed(other, b)
	c.release(slot)
	c.release(other)
	// Both free: each prompt goes to the slot holding its prefix, not the lowest.
	if got, cached := c.take(append(b, 9)); got != 1 || cached != 2*CacheBlockTokens {
		t.Fatalf("B again: slot %d with %d cached; want slot 1 with %d", got, cached, 2*CacheBlockTokens)
	}
	if got, cached := c.take(a); got != 0 || cached != 3*CacheBlockTokens {
		t.Fatalf("A again: slot %d with %d cached; want slot 0 with %d", got, cached, 3*CacheBlockTokens)
	}
}

// The hash sees exactly the tokens prompt_eval_count counts, in every dialect.
func TestPromptHashCountsLikePromptEvalCount(t *testing.T) {
	msgs := []openaiMessage{
		{Role: "system", Content: words(0, 37)},
		{Role: "user", Content: []any{map[string]any{"type": "text", "text": words(50, 9)},
			map[string]any{"type": "image_url", "image_url": "data:image/png;base64,aGk="}}},
		{Role: "assistant", ToolCalls: []openaiToolCall{{Function: struct {
			Name      string `json:"name"`
			Arguments string `json:"arguments"`
		}{Name: "f", Arguments: `{"a":1}`}}}},
	}
	ph := newPromptHash()
	n, err := openaiPromptTokens(msgs, ph)
	if err != nil || n != ph.tokens || len(ph.blocks) != n/CacheBlockTokens {
		t.Fatalf("openai: counted %d (%v), hashed %d tokens in %d blocks", n, err, ph.tokens, len(ph.blocks))
	}
	g := generatePromptHash("be  brief\n", " one two\tthree ", "four")
	if want := countWords("be  brief\n") + countWords(" one two\tthree ") + countWords("four") + 2*PerMessageTokens; g.tokens != want {
		t.Fatalf("generate: hashed %d tokens, want %d", g.tokens, want)
	}
	// Different words in the same positions make different blocks.
	x, y := newPromptHash(), newPromptHash()
	x.words(words(0, 16))
	y.words(words(1, 16))
	if len(x.blocks) != 1 || x.blocks[0] == y.blocks[0] {
		t.Fatal("different prompts hashed alike")
	}
}

func TestPromptCacheGenerateAndOpenAI(t *testing.T) {
	e := start(t, Config{PromptTokenCost: cost, Parallel: 1})
	gen := `{"model":"tiny","stream":false,"system":"` + words(0, 300) + `","prompt":"hi"}`
	for i := range 2 {
		if r := e.post("/api/generate", gen); r.status != 200 {
			t.Fatalf("generate %d = %d %s", i, r.status, r.body)
		}
	}
	const genPrompt = 304 + 5
	if got, want := e.s.CachedPromptTokens(), int64(genPrompt/CacheBlockTokens*CacheBlockTokens); got != want {
		t.Fatalf("generate twice: %d cached, want %d", got, want)
	}
	e.s.ResetCounters()
	chat := `{"model":"tiny","messages":[{"role":"system","content":"` + words(7000, 300) + `"},{"role":"user","content":"hi"}]}`
	for i := range 2 {
		if r := e.post("/v1/chat/completions", chat); r.status != 200 {
			t.Fatalf("openai chat %d = %d %s", i, r.status, r.body)
		}
	}
	if got, want := e.s.CachedPromptTokens(), int64(genPrompt/CacheBlockTokens*CacheBlockTokens); got != want {
		t.Fatalf("/v1/chat/completions twice: %d cached, want %d", got, want)
	}
}

// A client that leaves during prompt evaluation frees its cache slot.
func TestPromptCacheSlotFreedOnCancel(t *testing.T) {
	e := start(t, Config{PromptTokenCost: time.Hour, Parallel: 1})
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() {
		req, _ := http.NewRequestWithContext(ctx, http.MethodPost, e.s.URL()+"/api/chat",
			strings.NewReader(`{"model":"tiny","messages":[{"role":"user","content":"hi"}]}`))
		resp, err := e.client.Do(req)
		if err == nil {
			resp.Body.Close()
		}
		done <- err
	}()
	waitFor(t, func() bool { return e.s.InFlight("tiny") == 1 })
	cancel()
	if err := <-done; err == nil {
		t.Fatal("the request finished instead of waiting an hour per token")
	}
	waitFor(t, func() bool { return e.s.InFlight("tiny") == 0 })
	c := e.s.promptCache(e.s.lookup("tiny"))
	c.mu.Lock()
	busy := c.slots[0].busy
	c.mu.Unlock()
	if busy != 0 {
		t.Fatalf("slot still marked busy (%d) after the client left", busy)
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !cond(); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("condition not reached in 10s")
		}
	}
}
