package affinity

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
)

var parser = Parser{BlockBytes: 64, Chain: true, DefaultOutput: 512}

// common returns how many leading hashes a and b share.
func common(a, b []uint64) int {
	n := 0
	for n < len(a) && n < len(b) && a[n] == b[n] {
		n++
	}
	return n
}

func chatBody(t *testing.T, extra map[string]any, msgs ...map[string]any) []byte {
	t.Helper()
	b := map[string]any{"model": "m", "messages": msgs}
	for k, v := range extra {
		b[k] = v
	}
	out, err := json.Marshal(b)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func msg(role, content string) map[string]any {
	return map[string]any{"role": role, "content": content}
}

var system = strings.Repeat("You are a careful assistant. ", 40)

// A follow-up turn's chain extends its predecessor's: every block of the
// first prompt is a block of the second.
func TestFollowUpExtendsChain(t *testing.T) {
	for _, route := range []string{"/api/chat", "/v1/chat/completions", "/v1/messages"} {
		t.Run(route, func(t *testing.T) {
			turn1 := parser.Parse(route, chatBody(t, nil, msg("system", system), msg("user", "What is a slot?")), nil)
			turn2 := parser.Parse(route, chatBody(t, nil, msg("system", system), msg("user", "What is a slot?"),
				msg("assistant", "One request in flight on one model."), msg("user", "And a cap?")), nil)
			if len(turn1.Chain) < 10 {
				t.Fatalf("%d blocks for a %d-byte prompt", len(turn1.Chain), turn1.Bytes)
			}
			if n := common(turn1.Chain, turn2.Chain); n != len(turn1.Chain) {
				t.Fatalf("turn 2 shares %d of turn 1's %d blocks", n, len(turn1.Chain))
			}
			other := parser.Parse(route, chatBody(t, nil, msg("system", "Another system prompt entirely."), msg("user", "What is a slot?")), nil)
			if common(turn1.Chain, other.Chain) != 0 {
				t.Fatal("a different system prompt shares the first block")
			}
		})
	}
}

// What the model sees is in the hash: images, tools, tool calls; what it
// does not (whitespace between JSON tokens, sampling options) is not.
func TestCanonicalForm(t *testing.T) {
	base := chatBody(t, nil, msg("system", system), msg("user", "hi"))
	p := parser.Parse("/api/chat", base, nil)
	var spaced bytes.Buffer
	if err := json.Indent(&spaced, base, "", "  "); err != nil {
		t.Fatal(err)
	}
	same := []struct {
		name string
		body string
	}{
		{"indented", spaced.String()},
		{"options", string(chatBody(t, map[string]any{"options": map[string]any{"temperature": 0.1}, "stream": false}, msg("system", system), msg("user", "hi")))},
	}
	for _, tt := range same {
		if q := parser.Parse("/api/chat", []byte(tt.body), nil); fmt.Sprint(q.Chain) != fmt.Sprint(p.Chain) {
			t.Errorf("%s: chain changed", tt.name)
		}
	}
	img := map[string]any{"role": "user", "content": "hi", "images": []string{strings.Repeat("iVBORw0KGgo", 20)}}
	call := map[string]any{"role": "user", "content": "hi", "tool_calls": []any{map[string]any{"function": map[string]any{"name": "f", "arguments": map[string]any{}}}}}
	differ := []struct {
		name string
		body []byte
	}{
		{"image", chatBody(t, nil, msg("system", system), img)},
		{"tool call", chatBody(t, nil, msg("system", system), call)},
		{"tools", chatBody(t, map[string]any{"tools": []any{map[string]any{"type": "function", "function": map[string]any{"name": "f"}}}}, msg("system", system), msg("user", "hi"))},
		{"role", chatBody(t, nil, msg("user", system), msg("user", "hi"))},
	}
	for _, tt := range differ {
		q := parser.Parse("/api/chat", tt.body, nil)
		if fmt.Sprint(q.Chain) == fmt.Sprint(p.Chain) {
			t.Errorf("%s: the chain did not change", tt.name)
		}
	}
}

func TestGenerateAndCompletions(t *testing.T) {
	long := strings.Repeat("Once upon a time ", 30)
	g1 := parser.Parse("/api/generate", []byte(fmt.Sprintf(`{"model":"m","system":"be brief","prompt":%q}`, long)), nil)
	g2 := parser.Parse("/api/generate", []byte(fmt.Sprintf(`{"model":"m","system":"be brief","prompt":%q}`, long+" there was a router.")), nil)
	if len(g1.Chain) == 0 || common(g1.Chain, g2.Chain) != len(g1.Chain) {
		t.Fatalf("a longer generate prompt shares %d of %d blocks", common(g1.Chain, g2.Chain), len(g1.Chain))
	}
	g3 := parser.Parse("/api/generate", []byte(fmt.Sprintf(`{"model":"m","system":"be long","prompt":%q}`, long)), nil)
	if common(g1.Chain, g3.Chain) != 0 {
		t.Fatal("another system prompt shares blocks")
	}
	c := parser.Parse("/v1/completions", []byte(fmt.Sprintf(`{"model":"m","prompt":[%q],"max_tokens":7}`, long)), nil)
	if len(c.Chain) == 0 || c.Tokens != (int64(c.Bytes)+3)/4+7 {
		t.Fatalf("completions: %d blocks, %d tokens for %d bytes", len(c.Chain), c.Tokens, c.Bytes)
	}
}

// The Responses API: input items resent with the history extend the chain.
func TestResponsesInput(t *testing.T) {
	item := func(role, text string) string { return fmt.Sprintf(`{"role":%q,"content":%q}`, role, text) }
	long := strings.Repeat("the instructions of a long session ", 20)
	r1 := parser.Parse("/v1/responses", []byte(fmt.Sprintf(`{"model":"m","instructions":%q,"input":[%s]}`, long, item("user", strings.Repeat("q ", 60)))), nil)
	r2 := parser.Parse("/v1/responses", []byte(fmt.Sprintf(`{"model":"m","instructions":%q,"input":[%s,%s,%s]}`, long,
		item("user", strings.Repeat("q ", 60)), item("assistant", "a"), item("user", "next"))), nil)
	if len(r1.Chain) < 5 || common(r1.Chain, r2.Chain) < len(r1.Chain)-1 {
		t.Fatalf("the follow-up shares %d of %d blocks", common(r1.Chain, r2.Chain), len(r1.Chain))
	}
}

func TestSessionHints(t *testing.T) {
	h := http.Header{}
	h.Set(SessionHeader, "conv-1")
	tests := []struct {
		name string
		body string
		h    http.Header
		same string // the case whose session this one must equal ("" none)
	}{
		{"header", `{"messages":[]}`, h, ""},
		{"header wins", `{"messages":[],"user":"u"}`, h, "header"},
		{"prompt_cache_key", `{"messages":[],"prompt_cache_key":"k","user":"u"}`, nil, ""},
		{"user", `{"messages":[],"user":"u"}`, nil, ""},
		{"anthropic", `{"messages":[],"metadata":{"user_id":"u"}}`, nil, "user"},
	}
	got := map[string]uint64{}
	for _, tt := range tests {
		p := parser.Parse("/v1/chat/completions", []byte(tt.body), tt.h)
		if p.Session == 0 {
			t.Fatalf("%s: no session", tt.name)
		}
		got[tt.name] = p.Session
		if tt.same != "" && p.Session != got[tt.same] {
			t.Errorf("%s: session differs from %s", tt.name, tt.same)
		}
	}
	if got["prompt_cache_key"] == got["user"] || got["header"] == got["user"] {
		t.Error("different hints give the same session")
	}
	if p := parser.Parse("/api/chat", []byte(`{"messages":[]}`), nil); p.Session != 0 {
		t.Error("a session without a hint")
	}
}

// A body the parser cannot read still gets a token estimate and no chain.
func TestUnreadableBody(t *testing.T) {
	p := parser.Parse("/api/chat", []byte(`{"messages": "not a list"}`), nil)
	if len(p.Chain) != 0 || p.Tokens == 0 {
		t.Fatalf("%+v", p)
	}
}

// The hashes are fixed functions of the bytes: replicas built from other
// binaries must agree, so they are pinned here.
func TestChainIsStable(t *testing.T) {
	p := Parser{BlockBytes: 64, Chain: true}.Parse("/api/generate", []byte(`{"prompt":"`+strings.Repeat("a", 200)+`"}`), nil)
	got := fmt.Sprintf("%x", p.Chain)
	const want = "[1eb9fb81924fc383 46a0b06b1e5e1c5a a3a7e5036b349622]"
	if got != want {
		t.Fatalf("chain %s, pinned %s: changing the hash splits a fleet of mixed versions", got, want)
	}
}

// BenchmarkPrefixChain is the cost the prefix strategy adds to a request:
// reading a chat of a 2,000-token system prompt and six turns (about
// 9 KB) and hashing it in 256-byte blocks.
func BenchmarkPrefixChain(b *testing.B) {
	msgs := []any{map[string]any{"role": "system", "content": strings.Repeat("Answer as the fleet's router would. ", 230)}}
	for i := range 6 {
		msgs = append(msgs, map[string]any{"role": "user", "content": fmt.Sprintf("Question %d about routing and caches?", i)},
			map[string]any{"role": "assistant", "content": strings.Repeat("An answer of some length. ", 8)})
	}
	body, _ := json.Marshal(map[string]any{"model": "llama3.2", "messages": msgs, "stream": true})
	ps := Parser{BlockBytes: 256, Chain: true, DefaultOutput: 512}
	b.SetBytes(int64(len(body)))
	b.ReportAllocs()
	for b.Loop() {
		ps.Parse("/api/chat", body, nil)
	}
}
