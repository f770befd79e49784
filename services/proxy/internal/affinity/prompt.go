// Package affinity knows which backend probably holds a request's prompt
// prefix in its KV cache: it hashes each prompt into a chain of block
// hashes in the request's own dialect (Prompt), keeps per (backend, model)
// a bounded, ageing index of the chains recently sent there (Index), and
// shares the index's inserts with the other proxy replicas over core NATS
// (Sharer), so a follow-up turn sent through any replica finds the warm
// backend. The routing package ranks candidates with it (docs/routing.md).
package affinity

import (
	"bytes"
	"encoding/binary"
	"net/http"
	"strings"
)

// SessionHeader names a client's explicit conversation id.
const SessionHeader = "X-Session-Id"

// Prompt is what routing needs to know of one request's prompt.
type Prompt struct {
	// Chain holds the hash of every whole block of the canonical prompt,
	// each covering the prompt from its start to the block's end, so two
	// prompts share the first n hashes exactly when they share their first
	// n blocks. A follow-up chat turn extends its predecessor's chain.
	Chain []uint64
	// Session is the hash of the client's explicit affinity hint
	// (X-Session-Id, OpenAI's prompt_cache_key or user, Anthropic's
	// metadata.user_id); 0: none.
	Session uint64
	// Tokens estimates the prompt and output tokens the request will cost
	// a backend (prompt bytes / 4 plus its output bound).
	Tokens int64
	// Bytes is the canonical prompt's length.
	Bytes int
}

// Parser turns request bodies into Prompts.
type Parser struct {
	// BlockBytes is the block size of the chain, a multiple of 8.
	BlockBytes int
	// Chain: hash the prompt (false: only the session hint and tokens).
	Chain bool
	// DefaultOutput is the output tokens assumed when a request sets no
	// bound (limits.default_output_tokens).
	DefaultOutput int64
}

// Parse reads body as route's dialect. A body it cannot read gives an
// empty Prompt (routing then balances by load), never an error: the
// handlers have already accepted the request.
func (ps Parser) Parse(route string, raw []byte, h http.Header) Prompt {
	f := fieldsPool.Get().(*fields)
	defer func() { f.reset(); fieldsPool.Put(f) }()
	if !scan(raw, f) {
		// What the scanner does not take on (escapes in names, duplicate
		// or oddly cased keys, odd types) encoding/json decides.
		f.reset()
		if !decode(raw, f) {
			return Prompt{Tokens: (int64(len(raw)) + 3) / 4}
		}
	}
	return ps.prompt(route, f, h)
}

// parseSlow is Parse by encoding/json alone: the reference the scanner is
// fuzzed against.
func (ps Parser) parseSlow(route string, raw []byte, h http.Header) Prompt {
	var f fields
	if !decode(raw, &f) {
		return Prompt{Tokens: (int64(len(raw)) + 3) / 4}
	}
	return ps.prompt(route, &f, h)
}

func (ps Parser) prompt(route string, f *fields, h http.Header) Prompt {
	p := Prompt{}
	if s := h.Get(SessionHeader); s != "" {
		p.Session = sessionHash(s)
	} else if s := firstOf(f.promptCacheKey, f.metadataUserID, f.user); len(s) > 0 {
		p.Session = sessionHash(string(s))
	}
	var c chainer
	c.block = 1 << 30
	if ps.Chain {
		c.block = ps.BlockBytes
	}
	c.reset()
	canonical(&c, f)
	p.Chain = c.out
	p.Bytes = c.total
	p.Tokens = (int64(c.total)+3)/4 + ps.output(route, f)
	return p
}

func firstOf(s ...[]byte) []byte {
	for _, v := range s {
		if len(v) > 0 {
			return v
		}
	}
	return nil
}

// output is the request's output bound as limits.Estimate reads it.
func (ps Parser) output(route string, f *fields) int64 {
	if strings.Contains(route, "embed") {
		return 0
	}
	out := int64(-1)
	for _, v := range f.bounds {
		if v > 0 && (out < 0 || v < out) {
			out = v
		}
	}
	if out < 0 {
		return ps.DefaultOutput
	}
	return out
}

// Field and record separators of the canonical form: they cannot occur
// in compacted JSON text, so no two different prompts run together alike.
const (
	fieldSep  = 0x1f
	recordSep = 0x1e
)

// canonical writes the prompt in the order the model sees it: tools, then
// system (or the Responses API's instructions), then each message (role,
// content, images, tool calls) in order, or the Responses API's input
// items, or the generate prompt and its images. JSON values go in compacted, so
// a client's whitespace does not matter; their field order does (clients
// resend history with the same serializer).
func canonical(c *chainer, f *fields) {
	if len(f.tools) > 0 {
		c.writeString("tools")
		c.writeJSON(f.tools)
		c.writeByte(recordSep)
	}
	if len(f.system) > 0 {
		c.writeString("system")
		c.writeByte(fieldSep)
		c.writeJSON(f.system)
		c.writeByte(recordSep)
	}
	if len(f.instructions) > 0 {
		c.writeString("instructions")
		c.writeByte(fieldSep)
		c.writeJSON(f.instructions)
		c.writeByte(recordSep)
	}
	for i := range f.messages {
		m := &f.messages[i]
		c.write(m.role)
		c.writeByte(fieldSep)
		c.writeJSON(m.content)
		for _, img := range f.images[m.images[0]:m.images[1]] {
			c.writeByte(fieldSep)
			c.writeJSON(img)
		}
		if len(m.toolCalls) > 0 {
			c.writeByte(fieldSep)
			c.writeJSON(m.toolCalls)
		}
		if len(m.toolCallID) > 0 || len(m.name) > 0 {
			c.writeByte(fieldSep)
			c.write(m.toolCallID)
			c.write(m.name)
		}
		c.writeByte(recordSep)
	}
	if len(f.input) > 0 {
		c.writeString("input")
		c.writeByte(fieldSep)
		c.writeJSON(f.input)
		c.writeByte(recordSep)
	}
	if len(f.prompt) > 0 {
		c.writeString("prompt")
		c.writeByte(fieldSep)
		c.writeJSON(f.prompt)
		for _, img := range f.images[f.promptImages[0]:f.promptImages[1]] {
			c.writeByte(fieldSep)
			c.writeJSON(img)
		}
		if len(f.suffix) > 0 {
			c.writeByte(fieldSep)
			c.writeJSON(f.suffix)
		}
	}
}

// chainer hashes a byte stream 8 bytes at a time and records the running
// hash at every block boundary. The running state after n bytes depends on
// all n, so each recorded hash names the whole prefix. The mix is fixed
// (not maphash, whose seed differs per process): replicas must agree.
type chainer struct {
	h     uint64
	word  [8]byte
	nw    int // bytes in word
	total int // bytes written
	block int // bytes per block, a multiple of 8
	out   []uint64
}

const (
	seed  = 0x243f6a8885a308d3 // pi's fraction: the chain's start
	prime = 0x9e3779b97f4a7c15
)

func (c *chainer) reset() { c.h, c.nw, c.total, c.out = seed, 0, 0, c.out[:0] }

func (c *chainer) mixWord(w uint64) {
	c.h = (c.h ^ w) * prime
	c.h ^= c.h >> 29
	c.total += 8
	if c.total%c.block == 0 {
		c.out = append(c.out, finish(c.h))
	}
}

func (c *chainer) writeByte(b byte) {
	c.word[c.nw] = b
	c.nw++
	if c.nw == 8 {
		c.mixWord(binary.LittleEndian.Uint64(c.word[:]))
		c.nw = 0
	}
}

func (c *chainer) write(p []byte) {
	for c.nw != 0 && len(p) > 0 {
		c.writeByte(p[0])
		p = p[1:]
	}
	for len(p) >= 8 {
		c.mixWord(binary.LittleEndian.Uint64(p))
		p = p[8:]
	}
	for _, b := range p {
		c.writeByte(b)
	}
}

func (c *chainer) writeString(s string) {
	for i := 0; i < len(s); i++ {
		c.writeByte(s[i])
	}
}

// writeJSON writes a JSON value without insignificant whitespace. A
// string value goes in as its JSON text (quotes and escapes included).
func (c *chainer) writeJSON(v []byte) {
	if len(v) == 0 {
		return
	}
	if v[0] == '"' || !bytes.ContainsAny(v, " \t\r\n") {
		c.write(v) // a string, or already compact
		return
	}
	inString, escaped := false, false
	start := 0
	for i, ch := range v {
		switch {
		case inString:
			switch {
			case escaped:
				escaped = false
			case ch == '\\':
				escaped = true
			case ch == '"':
				inString = false
			}
		case ch == '"':
			inString = true
		case ch == ' ' || ch == '\t' || ch == '\r' || ch == '\n':
			c.write(v[start:i])
			start = i + 1
		}
	}
	c.write(v[start:])
}

// finish spreads the state's bits (splitmix64's finaliser).
func finish(h uint64) uint64 {
	h ^= h >> 30
	h *= 0xbf58476d1ce4e5b9
	h ^= h >> 27
	h *= 0x94d049bb133111eb
	h ^= h >> 31
	return h
}

// sessionHash names a session hint, apart from any block hash.
func sessionHash(s string) uint64 {
	c := chainer{block: 1 << 30}
	c.reset()
	c.writeString("session")
	c.writeByte(fieldSep)
	c.writeString(s)
	for c.nw != 0 {
		c.writeByte(0)
	}
	return finish(c.h ^ 0x5e55)
}
