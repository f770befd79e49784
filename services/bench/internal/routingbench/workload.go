// Package routingbench measures how Drover's routing strategies use the
// backends' prompt caches (issue 15): fake Ollama backends that cache
// prompt prefixes per slot and charge for uncached prompt tokens, a
// workload of conversation groups sharing long system prompts, and an
// open-loop ramp of Poisson arrivals through one or more drover-proxy
// replicas. docs/routing-bench.md has the method and the figures.
package routingbench

import (
	"errors"
	"math"
	"math/rand/v2"
	"sort"
	"strings"
	"time"
)

// WorkloadSpec shapes the requests.
type WorkloadSpec struct {
	// Groups is the number of conversation groups, each with its own system
	// prompt of SystemWords words (one fake token each).
	Groups      int
	SystemWords int
	// Zipf is the exponent of the groups' popularity: group k (from 0) is
	// chosen with weight 1/(k+1)^Zipf.
	Zipf float64
	// UserWords is each user message's length; every message is new text.
	UserWords int
	// MultiTurn is the share of sessions that are conversations of Turns
	// requests, each turn sent ThinkTime (mean, exponential) after the
	// previous reply with the history so far; the rest are single requests.
	MultiTurn float64
	Turns     int
	ThinkTime time.Duration
	// ReplyTokens is num_predict: the tokens each reply decodes.
	ReplyTokens int
}

// DefaultWorkload is the workload: system prompts of about 2,000
// tokens, Zipf popularity, a fifth of the sessions multi-turn. Its 32
// groups are twice the slots of four backends with four slots each, so
// which backend a group lands on decides whether its prompt is cached.
func DefaultWorkload() WorkloadSpec {
	return WorkloadSpec{Groups: 32, SystemWords: 2000, Zipf: 1.0, UserWords: 30,
		MultiTurn: 0.2, Turns: 4, ThinkTime: 300 * time.Millisecond, ReplyTokens: 16}
}

// Validate names the first bad field.
func (s WorkloadSpec) Validate() error {
	switch {
	case s.Groups < 1:
		return errors.New("groups must be at least 1")
	case s.SystemWords < 0 || s.UserWords < 1:
		return errors.New("system words must be >= 0 and user words >= 1")
	case s.Zipf < 0:
		return errors.New("zipf exponent must be >= 0")
	case s.MultiTurn < 0 || s.MultiTurn > 1:
		return errors.New("multi-turn share must be in [0, 1]")
	case s.Turns < 1:
		return errors.New("turns must be at least 1")
	case s.ReplyTokens < 1:
		return errors.New("reply tokens must be at least 1")
	}
	return nil
}

// RequestsPerSession is the mean number of requests a session sends.
func (s WorkloadSpec) RequestsPerSession() float64 {
	return (1 - s.MultiTurn) + s.MultiTurn*float64(s.Turns)
}

// Session is one client conversation: Turns requests in group Group,
// the first sent At after the run starts.
type Session struct {
	ID    int
	At    time.Duration
	Group int
	Turns int
	// Think holds the pause before each turn after the first.
	Think []time.Duration
}

// Step is one level of offered load: Rate requests per second for Duration.
type Step struct {
	Rate     float64
	Duration time.Duration
}

// Schedule draws the sessions of a ramp: Poisson session arrivals at each
// step's Rate / RequestsPerSession, groups by Zipf popularity, a MultiTurn
// share of conversations. The same seed gives the same schedule, so every
// strategy sees the same requests.
func (s WorkloadSpec) Schedule(steps []Step, seed uint64) []Session {
	rng := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	cdf := zipfCDF(s.Groups, s.Zipf)
	var out []Session
	var start time.Duration
	for _, st := range steps {
		sessionRate := st.Rate / s.RequestsPerSession()
		t := start
		for {
			t += time.Duration(rng.ExpFloat64() / sessionRate * float64(time.Second))
			if t >= start+st.Duration {
				break
			}
			sess := Session{ID: len(out), At: t, Group: sort.SearchFloat64s(cdf, rng.Float64()), Turns: 1}
			if rng.Float64() < s.MultiTurn {
				sess.Turns = s.Turns
				for range s.Turns - 1 {
					sess.Think = append(sess.Think, time.Duration(rng.ExpFloat64()*float64(s.ThinkTime)))
				}
			}
			out = append(out, sess)
		}
		start += st.Duration
	}
	return out
}

// zipfCDF is the cumulative popularity of n groups, the last entry 1.
func zipfCDF(n int, exp float64) []float64 {
	cdf := make([]float64, n)
	sum := 0.0
	for k := range n {
		sum += 1 / math.Pow(float64(k+1), exp)
		cdf[k] = sum
	}
	for k := range cdf {
		cdf[k] /= sum
	}
	cdf[n-1] = 1
	return cdf
}

// Message is an Ollama chat message.
type Message struct {
	Role    string `json:"role"`
	Content string `json:"content"`
}

// System is group g's system prompt: SystemWords words no other group's
// prompt starts with. Words are three letters, four bytes with their
// space, so Drover's token estimate (prompt bytes / 4) is about the fake
// backend's count (a token a word), as it is for English text at a real
// tokenizer.
func (s WorkloadSpec) System(g int) string {
	return words(s.SystemWords, uint64(g), 0)
}

// User is turn's user message in session id: text no other request sends.
func (s WorkloadSpec) User(id, turn int) string {
	return words(s.UserWords, uint64(id), uint64(turn)+1)
}

// words is n three-letter words: tag, the number of words id takes, and
// id, each spelt in base 26 (so no other (id, tag) starts the same way),
// then words drawn at random from a generator seeded with (id, tag).
func words(n int, id, tag uint64) string {
	var b strings.Builder
	b.Grow(4 * n)
	word := func(v uint64) {
		if b.Len() > 0 {
			b.WriteByte(' ')
		}
		b.WriteByte(byte('a' + v%26))
		b.WriteByte(byte('a' + v/26%26))
		b.WriteByte(byte('a' + v/676%26))
	}
	var digits []uint64
	for v := id; ; v /= 17576 {
		digits = append(digits, v%17576)
		if v < 17576 {
			break
		}
	}
	head := append([]uint64{tag, uint64(len(digits))}, digits...)
	r := rand.New(rand.NewPCG(id, tag))
	for i := range n {
		if i < len(head) {
			word(head[i])
		} else {
			word(r.Uint64N(17576))
		}
	}
	return b.String()
}
