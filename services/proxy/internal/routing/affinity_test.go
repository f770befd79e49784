package routing

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/droverhq/drover/services/proxy/internal/affinity"
)

// outcomes tallies the router's affinity outcomes.
type outcomes struct {
	mu sync.Mutex
	n  map[string]int
}

func (o *outcomes) add(outcome string, _, _ int) {
	o.mu.Lock()
	o.n[outcome]++
	o.mu.Unlock()
}

func (o *outcomes) get(outcome string) int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.n[outcome]
}

func affineRouter(strategy Strategy, bound int, tokenBound int64) (*Router, *outcomes) {
	o := &outcomes{n: map[string]int{}}
	return New(Options{MaxQueue: 100, MaxWait: 10 * time.Second, Strategy: strategy, Affinity: &Affinity{
		Index:  affinity.NewIndex(1000, time.Hour),
		Parser: affinity.Parser{BlockBytes: 64, Chain: strategy == Prefix, DefaultOutput: 100},
		// Outcomes are reported outside the router's lock.
		LoadBound: bound, LoadBoundTokens: tokenBound, Outcome: o.add,
	}}, nil), o
}

func chatPrompt(r *Router, system string, turns int, session string) *affinity.Prompt {
	msgs := []string{fmt.Sprintf(`{"role":"system","content":%q}`, system)}
	for i := range turns {
		msgs = append(msgs, fmt.Sprintf(`{"role":"user","content":"question %d"}`, i), fmt.Sprintf(`{"role":"assistant","content":"answer %d"}`, i))
	}
	body := `{"model":"m","messages":[` + strings.Join(msgs, ",") + `]}`
	h := map[string][]string{}
	if session != "" {
		h[affinity.SessionHeader] = []string{session}
	}
	return r.Prompt("/api/chat", []byte(body), h)
}

func mustAcquire(t *testing.T, r *Router, cands []Candidate, p *affinity.Prompt) *Slot {
	t.Helper()
	s, err := r.AcquireFor(context.Background(), Tenant{}, cands, p)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

var sysA = strings.Repeat("You are the first assistant. ", 20)

// homeOf is the candidate a prompt cached nowhere goes to when all are
// within the load bound: the highest rendezvous score of its first block.
func homeOf(p *affinity.Prompt, cands []Candidate) (home, other string) {
	var best uint64
	for _, c := range cands {
		if s := affinity.HomeScore(p.Home(), c.Backend); home == "" || s > best {
			home, best = c.Backend, s
		}
	}
	for _, c := range cands {
		if c.Backend != home {
			return home, c.Backend
		}
	}
	return home, ""
}

// The backend holding the prefix wins while it carries at most the load
// bound more than the least loaded; beyond, the least loaded wins.
func TestLoadBound(t *testing.T) {
	r, o := affineRouter(Prefix, 2, 0)
	cands := []Candidate{cand("a", "m", 8, true, 1), cand("b", "m", 8, true, 1)}
	home, other := homeOf(chatPrompt(r, sysA, 0, ""), cands)
	first := mustAcquire(t, r, cands, chatPrompt(r, sysA, 0, ""))
	if first.Backend != home || o.get(OutcomeMiss) != 1 {
		t.Fatalf("first turn went to %s, not its home %s; outcomes %v", first.Backend, home, o.n)
	}
	// Turns 2 and 3 go home (1 and 2 more in flight than the other: within
	// the bound), turn 4 would be 3 more: it goes to the other.
	held := []*Slot{first}
	for turn := 1; turn <= 2; turn++ {
		s := mustAcquire(t, r, cands, chatPrompt(r, sysA, turn, ""))
		if s.Backend != home {
			t.Fatalf("turn %d went to %s with a %d ahead", turn+1, s.Backend, turn)
		}
		held = append(held, s)
	}
	s := mustAcquire(t, r, cands, chatPrompt(r, sysA, 3, ""))
	if s.Backend != other || o.get(OutcomeOverride) != 1 || o.get(OutcomeHit) != 2 {
		t.Fatalf("over the bound went to %s, outcomes %v", s.Backend, o.n)
	}
	held = append(held, s)
	for _, s := range held {
		s.Release()
	}
	if len(r.InFlight()) != 0 || len(r.tokens) != 0 {
		t.Fatalf("left in flight %v, tokens %v", r.InFlight(), r.tokens)
	}
}

// Beyond the bound, the strongest affinity within it still wins: a holds
// the whole conversation but is over the bound, b holds its system prompt,
// c nothing: b, counted as an override (the bound changed the choice).
func TestLoadBoundFallsBackToPartialMatch(t *testing.T) {
	r, o := affineRouter(Prefix, 2, 0)
	a, b, c := cand("a", "m", 8, true, 1), cand("b", "m", 8, true, 1), cand("c", "m", 8, true, 1)
	mustAcquire(t, r, []Candidate{a}, chatPrompt(r, sysA, 3, "")).Release()
	mustAcquire(t, r, []Candidate{b}, chatPrompt(r, sysA, 0, "")).Release()
	var held []*Slot
	for range 3 {
		held = append(held, mustAcquire(t, r, []Candidate{a}, nil))
	}
	s := mustAcquire(t, r, []Candidate{a, b, c}, chatPrompt(r, sysA, 4, ""))
	if s.Backend != "b" || o.get(OutcomeOverride) != 1 {
		t.Fatalf("went to %s; outcomes %v", s.Backend, o.n)
	}
	for _, h := range append(held, s) {
		h.Release()
	}
}

// The token bound: one long request in flight on the affine backend
// outweighs the bound in tokens, though only one request.
func TestTokenBound(t *testing.T) {
	r, o := affineRouter(Prefix, 2, 1000)
	cands := []Candidate{cand("a", "m", 8, true, 1), cand("b", "m", 8, true, 1)}
	warm := mustAcquire(t, r, cands[:1], chatPrompt(r, sysA, 0, ""))
	warm.Release()
	long := mustAcquire(t, r, []Candidate{cands[0]}, chatPrompt(r, strings.Repeat("long context ", 400), 0, ""))
	defer long.Release()
	s := mustAcquire(t, r, cands, chatPrompt(r, sysA, 1, ""))
	defer s.Release()
	if s.Backend != "b" || o.get(OutcomeOverride) != 1 {
		t.Fatalf("went to %s with %d tokens in flight on a; outcomes %v", s.Backend, r.tokens["a"], o.n)
	}
}

// Other replicas' tokens in flight count as this replica's own: they
// break ties of requests in flight and bound affinity.
func TestRemoteTokens(t *testing.T) {
	r, o := affineRouter(Prefix, 2, 1000)
	remote := map[string]int64{}
	r.opts.Affinity.RemoteTokens = func(b string) int64 { return remote[b] } // read under the router's lock only
	cands := []Candidate{cand("a", "m", 8, true, 1), cand("b", "m", 8, true, 1)}
	mustAcquire(t, r, cands[:1], chatPrompt(r, sysA, 0, "")).Release() // a holds sysA
	remote["a"] = 5000
	s := mustAcquire(t, r, cands, chatPrompt(r, sysA, 1, ""))
	if s.Backend != "b" || o.get(OutcomeOverride) != 1 {
		t.Fatalf("went to %s with 5000 tokens in flight on a elsewhere; outcomes %v", s.Backend, o.n)
	}
	if got := r.TokenLoads(); got["b"] == 0 || len(got) != 1 {
		t.Fatalf("local loads %v", got)
	}
	s.Release()
	if got := r.TokenLoads(); len(got) != 0 {
		t.Fatalf("local loads left: %v", got)
	}
}

// Loaded-model preference comes first; a full candidate is never taken
// (caps hold), whatever it holds.
func TestAffinityKeepsLoadedFirstAndCaps(t *testing.T) {
	r, _ := affineRouter(Prefix, 10, 0)
	warmA := mustAcquire(t, r, []Candidate{cand("a", "m", 1, true, 1)}, chatPrompt(r, sysA, 0, ""))
	warmA.Release()
	// a holds the prefix but no longer has the model loaded: b, loaded, wins.
	s := mustAcquire(t, r, []Candidate{cand("a", "m", 1, false, 1), cand("b", "m", 1, true, 1)}, chatPrompt(r, sysA, 1, ""))
	if s.Backend != "b" {
		t.Fatalf("went to %s, not the loaded b", s.Backend)
	}
	s.Release()
	// a holds it and is loaded, but full (cap 1): b.
	hold := mustAcquire(t, r, []Candidate{cand("a", "m", 1, true, 1)}, nil)
	s = mustAcquire(t, r, []Candidate{cand("a", "m", 1, true, 1), cand("b", "m", 1, true, 1)}, chatPrompt(r, sysA, 1, ""))
	if s.Backend != "b" {
		t.Fatalf("went to %s over its cap", s.Backend)
	}
	s.Release()
	hold.Release()
}

// Round robin takes the candidates with a free slot in turn.
func TestRoundRobin(t *testing.T) {
	r := New(Options{MaxQueue: 1, MaxWait: time.Second, Strategy: RoundRobin}, nil)
	cands := []Candidate{cand("a", "m", 4, true, 1), cand("b", "m", 4, true, 1), cand("c", "m", 4, false, 1)}
	var got []string
	for range 6 {
		s, err := r.Acquire(context.Background(), Tenant{}, cands)
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, s.Backend)
		s.Release()
	}
	if strings.Join(got, "") != "abcabc" {
		t.Fatalf("turns %v", got)
	}
	// A full candidate is skipped.
	full := []Candidate{cand("a", "m", 4, true, 1), cand("b", "m", 0, true, 1)}
	for range 3 {
		s, err := r.Acquire(context.Background(), Tenant{}, full)
		if err != nil || s.Backend != "a" {
			t.Fatalf("%v %v", s, err)
		}
		s.Release()
	}
}

// Under the session strategy a conversation sticks to where its session
// went first, within the bound, and prompts alone do not attract.
func TestSessionStickiness(t *testing.T) {
	r, o := affineRouter(Session, 2, 0)
	cands := []Candidate{cand("a", "m", 8, true, 1), cand("b", "m", 8, true, 1)}
	// Session s1 lands on a (least loaded, first); s2 on b (a busy).
	s1 := mustAcquire(t, r, cands, chatPrompt(r, sysA, 0, "s1"))
	s2 := mustAcquire(t, r, cands, chatPrompt(r, sysA, 0, "s2"))
	if s1.Backend != "a" || s2.Backend != "b" {
		t.Fatalf("s1 on %s, s2 on %s", s1.Backend, s2.Backend)
	}
	s1.Release()
	// b now carries one request, a none: s2's next turn still goes to b.
	next := mustAcquire(t, r, cands, chatPrompt(r, sysA, 1, "s2"))
	if next.Backend != "b" {
		t.Fatalf("s2's next turn went to %s", next.Backend)
	}
	// Without a session the same prompt finds no affinity.
	anon := mustAcquire(t, r, cands, chatPrompt(r, sysA, 1, ""))
	if anon.Backend != "a" || o.get(OutcomeMiss) != 3 || o.get(OutcomeHit) != 1 {
		t.Fatalf("an anonymous turn went to %s; outcomes %v", anon.Backend, o.n)
	}
	for _, s := range []*Slot{s2, next, anon} {
		s.Release()
	}
}

// Affinity never reorders the queue: waiters are granted oldest first
// whatever they are affine to, each on whatever frees (w1 prefers b but
// takes a, freed first; w2 then gets b), and a waiter takes a freed slot
// on a backend it is not affine to rather than wait for its own.
func TestAffinityKeepsQueueOrder(t *testing.T) {
	r, _ := affineRouter(Prefix, 2, 0)
	both := []Candidate{cand("a", "m", 1, true, 1), cand("b", "m", 1, true, 1)}
	warm := mustAcquire(t, r, both[1:], chatPrompt(r, sysA, 0, "")) // b holds sysA
	warm.Release()
	holdA := mustAcquire(t, r, both[:1], nil)
	holdB := mustAcquire(t, r, both[1:], nil)
	type grant struct {
		who     int
		backend string
	}
	grants := make(chan grant, 3)
	var slots [3]*Slot
	for i := range 3 {
		system := sysA
		if i == 2 {
			system = "a prompt cached nowhere, long enough for a block or two of its own"
		}
		go func() {
			s, err := r.AcquireFor(context.Background(), Tenant{}, both, chatPrompt(r, system, i+1, ""))
			if err != nil {
				t.Error(err)
				grants <- grant{who: i}
				return
			}
			slots[i] = s
			grants <- grant{i, s.Backend}
		}()
		for r.QueueLen() != i+1 {
			time.Sleep(time.Millisecond)
		}
	}
	holdA.Release()
	if g := <-grants; g != (grant{0, "a"}) {
		t.Fatalf("first grant %+v, want the oldest waiter on a", g)
	}
	holdB.Release()
	if g := <-grants; g != (grant{1, "b"}) {
		t.Fatalf("second grant %+v, want the second waiter on b", g)
	}
	slots[0].Release()
	if g := <-grants; g != (grant{2, "a"}) {
		t.Fatalf("third grant %+v", g)
	}
	slots[1].Release()
	slots[2].Release()
	if len(r.InFlight()) != 0 || r.QueueLen() != 0 || len(r.tokens) != 0 {
		t.Fatalf("left: %v, queue %d, tokens %v", r.InFlight(), r.QueueLen(), r.tokens)
	}
}

func TestParseStrategy(t *testing.T) {
	for _, s := range []Strategy{LeastLoaded, Prefix, Session, RoundRobin} {
		got, err := ParseStrategy(s.String())
		if err != nil || got != s {
			t.Errorf("%s: %v %v", s, got, err)
		}
	}
	if _, err := ParseStrategy("sticky"); err == nil {
		t.Error("sticky accepted")
	}
}

// BenchmarkAcquireAffine is one acquire and release under the prefix
// strategy, the prompt (8 KB, 33 blocks) parsed beforehand, with four
// candidates: four lookups, the pick, one insert.
func BenchmarkAcquireAffine(b *testing.B) {
	r, _ := affineRouter(Prefix, 2, 0)
	r.opts.Affinity.Parser.BlockBytes = 256 // the default
	cands := []Candidate{cand("a", "m", 4, true, 1), cand("b", "m", 4, true, 1), cand("c", "m", 4, true, 1), cand("d", "m", 4, true, 1)}
	p := chatPrompt(r, strings.Repeat("a long shared system prompt ", 300), 3, "")
	b.ReportAllocs()
	for b.Loop() {
		s, err := r.AcquireFor(context.Background(), Tenant{}, cands, p)
		if err != nil {
			b.Fatal(err)
		}
		s.Release()
	}
}

// With the slot model, a backend whose only slot holding the prompt is
// busy holds nothing for it (Ollama would give the request another slot):
// the request goes by load. While other replicas are heard, the index
// decides as before.
func TestSlotModelSeesBusySlots(t *testing.T) {
	for _, alone := range []bool{true, false} {
		r, o := affineRouter(Prefix, 2, 0)
		r.opts.Affinity.Slots = affinity.NewSlots(time.Hour, 1000)
		r.opts.Affinity.Alone = func() bool { return alone }
		cands := []Candidate{cand("a", "m", 2, true, 1), cand("b", "m", 2, true, 1)}
		first := mustAcquire(t, r, cands, chatPrompt(r, sysA, 0, ""))
		second := mustAcquire(t, r, cands, chatPrompt(r, sysA, 1, ""))
		// Alone, the slot model sees the prompt's slot busy: a miss, which
		// goes home (where the first went: within the bound). With peers
		// heard the index decides: a hit where the first went.
		misses := map[bool]int{true: 2, false: 1}[alone]
		if second.Backend != first.Backend || o.get(OutcomeMiss) != misses {
			t.Fatalf("alone %t: turns went to %s, %s; outcomes %v", alone, first.Backend, second.Backend, o.n)
		}
		first.Release()
		second.Release()
		// The slots free again: the third turn finds its prefix.
		hits := o.get(OutcomeHit)
		mustAcquire(t, r, cands, chatPrompt(r, sysA, 2, ""))
		if o.get(OutcomeHit) != hits+1 {
			t.Fatalf("alone %t: third turn not a hit: %v", alone, o.n)
		}
	}
}

// A prompt cached nowhere goes to its home: the same backend for every
// prompt sharing its first block, on every replica (two routers that never
// talk), spread over the fleet by group; within the load bound of the
// least loaded only; and a prompt without a whole block goes by load.
func TestColdPromptsGoHome(t *testing.T) {
	cands := []Candidate{cand("a", "m", 8, true, 1), cand("b", "m", 8, true, 1), cand("c", "m", 8, true, 1), cand("d", "m", 8, true, 1)}
	r1, o := affineRouter(Prefix, 2, 0)
	r2, _ := affineRouter(Prefix, 2, 0)
	per := map[string]int{}
	for g := range 32 {
		system := fmt.Sprintf("Group %d's assistant. ", g) + sysA
		p := chatPrompt(r1, system, 0, "")
		home, _ := homeOf(p, cands)
		s1 := mustAcquire(t, r1, cands, p)
		s2 := mustAcquire(t, r2, cands, chatPrompt(r2, system, 0, ""))
		if s1.Backend != home || s2.Backend != home {
			t.Fatalf("group %d: replicas chose %s and %s, home %s", g, s1.Backend, s2.Backend, home)
		}
		per[home]++
		s1.Release()
		s2.Release()
		// Another conversation of the group, on a router that never saw it
		// (its first block is the group's): the same home.
		s := mustAcquire(t, r2, cands, chatPrompt(r2, system, 2, ""))
		if s.Backend != home {
			t.Fatalf("group %d's other conversation went to %s, home %s", g, s.Backend, home)
		}
		s.Release()
	}
	if len(per) != len(cands) {
		t.Fatalf("32 groups' homes fall on %d backends: %v", len(per), per)
	}
	if o.get(OutcomeMiss) != 32 {
		t.Fatalf("outcomes %v", o.n)
	}

	// The home three ahead of the others is beyond the bound (2): the
	// least loaded of the others takes the prompt.
	r, _ := affineRouter(Prefix, 2, 0)
	p := chatPrompt(r, "A new group's assistant. "+sysA, 0, "")
	home, _ := homeOf(p, cands)
	var held []*Slot
	for range 3 {
		held = append(held, mustAcquire(t, r, []Candidate{cand(home, "m", 8, true, 1)}, nil))
	}
	if s := mustAcquire(t, r, cands, p); s.Backend == home {
		t.Fatalf("went home, 3 ahead of the others")
	} else {
		held = append(held, s)
	}
	for _, s := range held {
		s.Release()
	}

	// The home without the model loaded loses to a loaded candidate:
	// loaded first, as ever.
	p = chatPrompt(r, "Another new group's assistant. "+sysA, 0, "")
	home, _ = homeOf(p, cands)
	unloaded := make([]Candidate, len(cands))
	for i, c := range cands {
		unloaded[i] = c
		unloaded[i].Loaded = c.Backend != home
	}
	if s := mustAcquire(t, r, unloaded, p); s.Backend == home {
		t.Fatalf("went home, where the model is not loaded")
	} else {
		s.Release()
	}

	// No whole block (64 bytes here): no home, the least loaded, first in
	// order on a quiet fleet.
	for range 3 {
		s := mustAcquire(t, r, cands, r.Prompt("/api/generate", []byte(`{"model":"m","prompt":"hi"}`), nil))
		if s.Backend != "a" {
			t.Fatalf("a short prompt went to %s", s.Backend)
		}
		s.Release()
	}
}

// With the slot model (one replica), a prompt cached nowhere goes where
// the slot it would overwrite holds the least requested group, before its
// home: a popular group keeps its slot.
func TestColdPromptSparesPopularSlots(t *testing.T) {
	r, _ := affineRouter(Prefix, 2, 0)
	r.opts.Affinity.Slots = affinity.NewSlots(time.Hour, 1000)
	a, b := cand("a", "m", 2, true, 1), cand("b", "m", 2, true, 1)
	hot, cool := "The popular group's assistant. "+sysA, "The quiet group's assistant. "+sysA
	for i := range 4 {
		mustAcquire(t, r, []Candidate{a}, chatPrompt(r, hot, i, "")).Release()
	}
	mustAcquire(t, r, []Candidate{b}, chatPrompt(r, cool, 0, "")).Release()
	// Find new groups whose home is a: without the slot model they would
	// overwrite the popular group's slot.
	sent := 0
	for g := 0; sent < 3; g++ {
		p := chatPrompt(r, fmt.Sprintf("New group %d's assistant. ", g)+sysA, 0, "")
		if home, _ := homeOf(p, []Candidate{a, b}); home != "a" {
			continue
		}
		s := mustAcquire(t, r, []Candidate{a, b}, p)
		if s.Backend != "b" {
			t.Fatalf("new group %d went home to a, over the popular group's slot", g)
		}
		s.Release()
		sent++
	}
	if s := mustAcquire(t, r, []Candidate{a, b}, chatPrompt(r, hot, 5, "")); s.Backend != "a" {
		t.Fatalf("the popular group's next turn went to %s", s.Backend)
	}
}

// slotRouter is a Prefix router (load bound 2) with a slot model, and
// the model.
func slotRouter() (*Router, *affinity.Slots) {
	r, _ := affineRouter(Prefix, 2, 0)
	r.opts.Affinity.Slots = affinity.NewSlots(time.Hour, 1000)
	return r, r.opts.Affinity.Slots
}

// holdWarm teaches r's slot model on a that a warm request is quick and a
// cold one slow (1 s), then holds a's slot warm with a prompt of its own
// group: a request of that group arriving now waits for the slot.
func holdWarm(t *testing.T, r *Router, a Candidate) (*affinity.Prompt, *Slot) {
	t.Helper()
	x := chatPrompt(r, "Group X. "+sysA, 0, "")
	mustAcquire(t, r, []Candidate{a}, x).Release()
	mustAcquire(t, r, []Candidate{a}, x).Release()
	s := mustAcquire(t, r, []Candidate{a}, chatPrompt(r, "Group Y. "+sysA, 0, ""))
	time.Sleep(time.Second)
	s.Release()
	hot := chatPrompt(r, "Group H. "+sysA, 0, "")
	mustAcquire(t, r, []Candidate{a}, hot).Release()
	return hot, mustAcquire(t, r, []Candidate{a}, hot)
}

// warmAfterRelease sends hot to cands, waits until it waits for the warm
// slot held, releases held and returns the slot the request got.
func warmAfterRelease(t *testing.T, r *Router, slots *affinity.Slots, held *Slot, cands []Candidate, hot *affinity.Prompt) *Slot {
	t.Helper()
	got := make(chan *Slot, 1)
	go func() { got <- mustAcquire(t, r, cands, hot) }()
	for deadline := time.Now().Add(10 * time.Second); slots.Waiting() == 0; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the request never waited for the busy slot")
		}
	}
	held.Release()
	return <-got
}

// With the slot model, a request whose group's slot is busy, and due back
// sooner than its prompt would take to evaluate, waits for that slot
// instead of evaluating the prompt cold elsewhere (and overwriting another
// group's slot); the slot is kept for it when released.
func TestWarmWaitReusesBusySlot(t *testing.T) {
	r, o := affineRouter(Prefix, 2, 0)
	slots := affinity.NewSlots(time.Hour, 1000)
	r.opts.Affinity.Slots = slots
	var mu sync.Mutex
	slotted := map[string]int{}
	r.opts.Affinity.Slotted = func(reason, wait string) {
		mu.Lock()
		slotted[reason+"/"+wait]++
		mu.Unlock()
	}
	a, b := cand("a", "m", 4, true, 1), cand("b", "m", 4, true, 1)
	hot, held := holdWarm(t, r, a)

	w := warmAfterRelease(t, r, slots, held, []Candidate{a, b}, hot)
	defer w.Release()
	mu.Lock()
	defer mu.Unlock()
	if w.Backend != "a" || slotted["hit/warm"] != 1 {
		t.Fatalf("went to %s; slot model outcomes %v, picks %v", w.Backend, slotted, o.n)
	}
}

// A request waiting for a warm slot is woken by the slot's release and
// ranks on counts that no longer hold the released request: here the
// backend has one slot, so with the released request still counted it
// would go cold to the other backend. Sharing the release is made slow, as
// a preempted replica would be, to give a wrong order the time to show.
func TestWarmWaiterRanksAfterRelease(t *testing.T) {
	r, slots := slotRouter()
	var slow atomic.Bool
	r.opts.Affinity.SlotEvent = func(ev affinity.SlotEvent) {
		if ev.Kind == affinity.SlotTake && ev.Chain == nil && slow.Load() {
			time.Sleep(100 * time.Millisecond)
		}
	}
	a, b := cand("a", "m", 1, true, 1), cand("b", "m", 1, true, 1)
	hot, held := holdWarm(t, r, a)
	slow.Store(true)

	w := warmAfterRelease(t, r, slots, held, []Candidate{a, b}, hot)
	defer w.Release()
	if w.Backend != "a" {
		t.Fatalf("the warm waiter went to %s, not to the slot it waited for", w.Backend)
	}
}

// The backend whose slot a request waited for is exempt from the load
// bound: here it carries three more requests than the idle one (the bound
// is two), and the waiter still takes the slot it waited for rather than
// evaluate its prompt cold on the idle backend.
func TestWarmWaiterExemptFromLoadBound(t *testing.T) {
	r, o := affineRouter(Prefix, 2, 0)
	slots := affinity.NewSlots(time.Hour, 1000)
	r.opts.Affinity.Slots = slots
	a, b := cand("a", "m", 8, true, 1), cand("b", "m", 8, true, 1)
	hot, held := holdWarm(t, r, a)
	for i := range 3 {
		defer mustAcquire(t, r, []Candidate{a}, chatPrompt(r, fmt.Sprintf("Load %d. %s", i, sysA), 0, "")).Release()
	}

	w := warmAfterRelease(t, r, slots, held, []Candidate{a, b}, hot)
	defer w.Release()
	if w.Backend != "a" || o.n[OutcomeHit] == 0 {
		t.Fatalf("the warm waiter went to %s; outcomes %v", w.Backend, o.n)
	}
}

// A slot kept for a request waiting for it (warm) is not given to a
// request that arrived after that one joined the slot's line: Ollama
// would put the newcomer in the kept slot (the lowest free) and the
// waiter, having waited, would be evaluated cold. The newcomer waits, as
// behind an earlier arrival, and gets the slot once the waiter is done.
func TestKeptSlotWaitsForItsWaiter(t *testing.T) {
	r, slots := slotRouter()
	a := cand("a", "m", 1, true, 1)
	hot, held := holdWarm(t, r, a)

	order := make(chan string, 2)
	waiter := make(chan *Slot, 1)
	go func() {
		w := mustAcquire(t, r, []Candidate{a}, hot)
		order <- "waiter"
		waiter <- w
	}()
	for deadline := time.Now().Add(10 * time.Second); slots.Waiting() == 0; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the request never waited for the busy slot")
		}
	}
	newcomer := make(chan *Slot, 1)
	go func() {
		n := mustAcquire(t, r, []Candidate{a}, chatPrompt(r, "Group N. "+sysA, 0, ""))
		order <- "newcomer"
		newcomer <- n
	}()
	for deadline := time.Now().Add(10 * time.Second); r.QueueLen() == 0; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the newcomer never queued (the backend's one slot is held)")
		}
	}
	held.Release()
	if first := <-order; first != "waiter" {
		t.Fatalf("%s got the kept slot first", first)
	}
	(<-waiter).Release()
	(<-newcomer).Release()
}

// A request held back from a slot kept for another replica's waiter goes
// as soon as that waiter is heard to leave the line (the server rechecks
// the router after applying the others' slot events), not when the
// keeping lapses.
func TestKeptForRemoteWaiterFreedByItsLeave(t *testing.T) {
	r, slots := slotRouter()
	a := cand("a", "m", 1, true, 1)
	hot, held := holdWarm(t, r, a)
	at := affinity.Target{Backend: "a", Model: "m"}
	// r2's request joined the line of the slot held, waiting up to 4 s
	// (its join names the take holding the slot, as a local waiter's
	// would).
	w, ok := slots.JoinWarm([]affinity.Target{at}, hot, time.Now())
	if !ok {
		t.Fatal("no line to join")
	}
	join := w.JoinEvent()
	slots.Leave(w)
	join.ID, join.Until = 7, time.Now().Add(4*time.Second).UnixMicro()
	slots.Apply("r2", []affinity.SlotEvent{join}, time.Now())
	held.Release() // now kept for r2's waiter

	got := make(chan *Slot, 1)
	go func() { got <- mustAcquire(t, r, []Candidate{a}, chatPrompt(r, "Group N. "+sysA, 0, "")) }()
	for deadline := time.Now().Add(10 * time.Second); r.QueueLen() == 0; time.Sleep(time.Millisecond) {
		select {
		case s := <-got:
			s.Release()
			t.Fatal("a newcomer took the slot kept for another replica's waiter")
		default:
		}
		if time.Now().After(deadline) {
			t.Fatal("the newcomer was neither granted nor held back")
		}
	}
	slots.Apply("r2", []affinity.SlotEvent{{T: at, Kind: affinity.SlotLeave, ID: 7}}, time.Now())
	r.Recheck()
	select {
	case s := <-got:
		s.Release()
	case <-time.After(time.Second):
		t.Fatal("the newcomer still waits after the waiter left the line")
	}
}

// A waiter that queued is ranked at its grant on what the slot model
// holds then, not on what it held when the request arrived: here another
// replica's request cached the prompt on the backend that is not its home
// while it waited.
func TestQueuedWaiterRanksAtGrant(t *testing.T) {
	r, o := affineRouter(Prefix, 2, 0)
	slots := affinity.NewSlots(time.Hour, 1000)
	r.opts.Affinity.Slots = slots
	cands := []Candidate{cand("a", "m", 4, true, 1), cand("b", "m", 4, true, 1)}
	p := chatPrompt(r, sysA, 0, "")
	home, other := homeOf(p, cands)
	now := time.Now()
	arrived := matches(r.opts.Affinity.Index, slots, cands, p, now, nil) // cached nowhere
	ot := affinity.Target{Backend: other, Model: "m"}
	slots.Apply("r2", []affinity.SlotEvent{{T: ot, ID: 1, Slots: 4, Chain: p.Chain}, {T: ot, ID: 1}}, now)
	for _, queued := range []bool{false, true} {
		w := &waiter{at: now, who: Tenant{}.normal(), cands: cands, aff: arrived, home: p.Home(), queued: queued,
			rank: func(now time.Time) []affinity.Match { return matches(r.opts.Affinity.Index, slots, cands, p, now, nil) }}
		w.q = w.who.queue()
		r.mu.Lock()
		c, ok := r.pickLocked(w, nil, now)
		r.mu.Unlock()
		want, outcome := home, OutcomeMiss // as it arrived: cached nowhere, home
		if queued {
			want, outcome = other, OutcomeHit
		}
		if !ok || c.Backend != want || w.choice.outcome != outcome {
			t.Fatalf("queued %t: went to %s (%s), want %s (%s); outcomes %v", queued, c.Backend, w.choice.outcome, want, outcome, o.n)
		}
	}
}
