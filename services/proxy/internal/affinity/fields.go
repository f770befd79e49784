package affinity

import (
	"bytes"
	"encoding/json"
	"strconv"
	"sync"
	"unicode/utf8"
)

// fields are the parts of a request body a prompt is made of, in every
// dialect: Ollama /api/chat and /api/generate, OpenAI chat and
// completions, Anthropic messages. Values are JSON texts (a JSON null is
// absent) or, for names, the string's bytes. They point into the body or
// into decoded copies; nothing outlives a Parse.
type fields struct {
	messages []msgFields
	// images holds every message's and the prompt's images; a message's
	// are images[m.images[0]:m.images[1]].
	images       [][]byte
	promptImages [2]int

	tools, system, prompt, suffix        []byte
	instructions, input                  []byte // OpenAI Responses
	user, promptCacheKey, metadataUserID []byte
	// bounds: options.num_predict, max_tokens, max_completion_tokens
	// (0: unset).
	bounds [3]int64
}

type msgFields struct {
	role, content, toolCalls, toolCallID, name []byte
	images                                     [2]int
}

func (f *fields) reset() {
	clear(f.messages) // drop references into the body
	clear(f.images)
	*f = fields{messages: f.messages[:0], images: f.images[:0]}
}

var fieldsPool = sync.Pool{New: func() any { return &fields{} }}

// value is a JSON value as a field holds it: null is absent.
func value(raw []byte) []byte {
	if string(raw) == "null" {
		return nil
	}
	return raw
}

// jsonBody is what encoding/json reads, for decode.
type jsonBody struct {
	Messages []struct {
		Role       string            `json:"role"`
		Content    json.RawMessage   `json:"content"`
		Images     []json.RawMessage `json:"images"`
		ToolCalls  json.RawMessage   `json:"tool_calls"`
		ToolCallID string            `json:"tool_call_id"`
		Name       string            `json:"name"`
	} `json:"messages"`
	Tools  json.RawMessage   `json:"tools"`
	System json.RawMessage   `json:"system"`
	Prompt json.RawMessage   `json:"prompt"`
	Images []json.RawMessage `json:"images"`
	Suffix json.RawMessage   `json:"suffix"`
	// OpenAI Responses: instructions, and input (a string or items).
	Instructions json.RawMessage `json:"instructions"`
	Input        json.RawMessage `json:"input"`

	User           string `json:"user"`
	PromptCacheKey string `json:"prompt_cache_key"`
	Metadata       struct {
		UserID string `json:"user_id"`
	} `json:"metadata"`

	Options struct {
		NumPredict *int64 `json:"num_predict"`
	} `json:"options"`
	MaxTokens           *int64 `json:"max_tokens"`
	MaxCompletionTokens *int64 `json:"max_completion_tokens"`
}

// decode fills f by encoding/json; false: the body is not what any
// dialect sends.
func decode(raw []byte, f *fields) bool {
	var b jsonBody
	if json.Unmarshal(raw, &b) != nil {
		return false
	}
	for _, m := range b.Messages {
		mf := msgFields{role: []byte(m.Role), content: value(m.Content), toolCalls: value(m.ToolCalls),
			toolCallID: []byte(m.ToolCallID), name: []byte(m.Name)}
		mf.images[0] = len(f.images)
		for _, img := range m.Images {
			f.images = append(f.images, value(img))
		}
		mf.images[1] = len(f.images)
		f.messages = append(f.messages, mf)
	}
	f.tools, f.system, f.prompt, f.suffix = value(b.Tools), value(b.System), value(b.Prompt), value(b.Suffix)
	f.instructions, f.input = value(b.Instructions), value(b.Input)
	f.promptImages[0] = len(f.images)
	for _, img := range b.Images {
		f.images = append(f.images, value(img))
	}
	f.promptImages[1] = len(f.images)
	f.user, f.promptCacheKey, f.metadataUserID = []byte(b.User), []byte(b.PromptCacheKey), []byte(b.Metadata.UserID)
	for i, v := range []*int64{b.Options.NumPredict, b.MaxTokens, b.MaxCompletionTokens} {
		if v != nil {
			f.bounds[i] = *v
		}
	}
	return true
}

// scan fills f from a body by walking its JSON text once, without
// allocating for it (encoding/json costs about ten times as much; see
// BenchmarkPrefixChain). It assumes valid JSON (the handlers have decoded
// the body already) and gives up (false) on anything where encoding/json
// might read otherwise: keys with escapes, keys matching a field only
// case-insensitively, duplicate keys, names with escapes, unexpected
// types. FuzzScan holds it to decode's results.
func scan(b []byte, f *fields) bool {
	s := scanner{b: b}
	var seen uint32
	ok := s.object(func(key []byte) bool {
		k, known := topKeys[string(key)]
		if !known {
			if isFoldedKey(key, topKeys) {
				return false
			}
			return s.skip()
		}
		if seen&(1<<k) != 0 {
			return false
		}
		seen |= 1 << k
		switch k {
		case kMessages:
			return s.messages(f)
		case kImages:
			f.promptImages[0] = len(f.images)
			ok := s.images(f)
			f.promptImages[1] = len(f.images)
			return ok
		case kUser:
			return s.str(&f.user)
		case kPromptCacheKey:
			return s.str(&f.promptCacheKey)
		case kMetadata:
			return s.nested(func(key []byte) bool {
				if string(key) == "user_id" {
					return s.str(&f.metadataUserID)
				}
				return !isFoldedKey(key, map[string]int{"user_id": 0}) && s.skip()
			})
		case kOptions:
			return s.nested(func(key []byte) bool {
				if string(key) == "num_predict" {
					return s.integer(&f.bounds[0])
				}
				return !isFoldedKey(key, map[string]int{"num_predict": 0}) && s.skip()
			})
		case kMaxTokens:
			return s.integer(&f.bounds[1])
		case kMaxCompletionTokens:
			return s.integer(&f.bounds[2])
		}
		raw, ok := s.raw()
		switch k {
		case kTools:
			f.tools = value(raw)
		case kSystem:
			f.system = value(raw)
		case kPrompt:
			f.prompt = value(raw)
		case kSuffix:
			f.suffix = value(raw)
		case kInstructions:
			f.instructions = value(raw)
		case kInput:
			f.input = value(raw)
		}
		return ok
	})
	return ok && s.end()
}

const (
	kMessages = iota
	kTools
	kSystem
	kPrompt
	kImages
	kSuffix
	kUser
	kPromptCacheKey
	kMetadata
	kOptions
	kMaxTokens
	kMaxCompletionTokens
	kInstructions
	kInput
)

var topKeys = map[string]int{"messages": kMessages, "tools": kTools, "system": kSystem, "prompt": kPrompt, "images": kImages,
	"suffix": kSuffix, "user": kUser, "prompt_cache_key": kPromptCacheKey, "metadata": kMetadata, "options": kOptions,
	"max_tokens": kMaxTokens, "max_completion_tokens": kMaxCompletionTokens, "instructions": kInstructions, "input": kInput}

var msgKeys = map[string]int{"role": 0, "content": 1, "images": 2, "tool_calls": 3, "tool_call_id": 4, "name": 5}

// isFoldedKey reports a key encoding/json would match to one of keys
// case-insensitively (its rule for struct fields).
func isFoldedKey(key []byte, keys map[string]int) bool {
	for k := range keys {
		if len(k) == len(key) && bytes.EqualFold([]byte(k), key) {
			return true
		}
	}
	return false
}

// scanner walks JSON text; pos is the next byte to read.
type scanner struct {
	b   []byte
	pos int
}

func (s *scanner) ws() {
	for s.pos < len(s.b) {
		switch s.b[s.pos] {
		case ' ', '\t', '\n', '\r':
			s.pos++
		default:
			return
		}
	}
}

func (s *scanner) peek() byte {
	s.ws()
	if s.pos >= len(s.b) {
		return 0
	}
	return s.b[s.pos]
}

func (s *scanner) end() bool { s.ws(); return s.pos == len(s.b) }

func (s *scanner) null() bool {
	if s.peek() == 'n' && bytes.HasPrefix(s.b[s.pos:], []byte("null")) {
		s.pos += 4
		return true
	}
	return false
}

// object calls member with each key (its raw bytes, without escapes) and
// the scanner at its value; member consumes the value.
func (s *scanner) object(member func(key []byte) bool) bool {
	if s.peek() != '{' {
		return false
	}
	s.pos++
	if s.peek() == '}' {
		s.pos++
		return true
	}
	for {
		if s.peek() != '"' {
			return false
		}
		start := s.pos + 1
		if !s.skipString() {
			return false
		}
		key := s.b[start : s.pos-1]
		if bytes.IndexByte(key, '\\') >= 0 || s.peek() != ':' {
			return false
		}
		s.pos++
		if !member(key) {
			return false
		}
		switch s.peek() {
		case ',':
			s.pos++
		case '}':
			s.pos++
			return true
		default:
			return false
		}
	}
}

// nested is object, or nothing for null (encoding/json leaves the struct
// as it is).
func (s *scanner) nested(member func(key []byte) bool) bool {
	if s.null() {
		return true
	}
	seen := map[string]bool{}
	return s.object(func(key []byte) bool {
		if seen[string(key)] {
			return false
		}
		seen[string(key)] = true
		return member(key)
	})
}

// array calls elem with the scanner at each element; elem consumes it.
// null is an empty array.
func (s *scanner) array(elem func() bool) bool {
	if s.null() {
		return true
	}
	if s.peek() != '[' {
		return false
	}
	s.pos++
	if s.peek() == ']' {
		s.pos++
		return true
	}
	for {
		if !elem() {
			return false
		}
		switch s.peek() {
		case ',':
			s.pos++
		case ']':
			s.pos++
			return true
		default:
			return false
		}
	}
}

func (s *scanner) messages(f *fields) bool {
	return s.array(func() bool {
		var m msgFields
		m.images[0], m.images[1] = len(f.images), len(f.images)
		if s.null() {
			f.messages = append(f.messages, m)
			return true
		}
		var seen uint8
		ok := s.object(func(key []byte) bool {
			k, known := msgKeys[string(key)]
			if !known {
				return !isFoldedKey(key, msgKeys) && s.skip()
			}
			if seen&(1<<k) != 0 {
				return false
			}
			seen |= 1 << k
			switch k {
			case 0:
				return s.str(&m.role)
			case 2:
				m.images[0] = len(f.images)
				ok := s.images(f)
				m.images[1] = len(f.images)
				return ok
			case 4:
				return s.str(&m.toolCallID)
			case 5:
				return s.str(&m.name)
			}
			raw, ok := s.raw()
			if k == 1 {
				m.content = value(raw)
			} else {
				m.toolCalls = value(raw)
			}
			return ok
		})
		f.messages = append(f.messages, m)
		return ok
	})
}

func (s *scanner) images(f *fields) bool {
	return s.array(func() bool {
		raw, ok := s.raw()
		f.images = append(f.images, value(raw))
		return ok
	})
}

// str reads a JSON string without escapes (or null: empty) into *dst.
func (s *scanner) str(dst *[]byte) bool {
	if s.null() {
		*dst = nil
		return true
	}
	if s.peek() != '"' {
		return false
	}
	start := s.pos + 1
	if !s.skipString() {
		return false
	}
	v := s.b[start : s.pos-1]
	// encoding/json would unescape, and replace invalid UTF-8.
	if bytes.IndexByte(v, '\\') >= 0 || !utf8.Valid(v) {
		return false
	}
	*dst = v
	return true
}

// integer reads a JSON integer (or null: 0) into *dst.
func (s *scanner) integer(dst *int64) bool {
	raw, ok := s.raw()
	if !ok {
		return false
	}
	if string(raw) == "null" {
		*dst = 0
		return true
	}
	n, err := strconv.ParseInt(string(raw), 10, 64)
	*dst = n
	return err == nil
}

// raw returns the next value's text.
func (s *scanner) raw() ([]byte, bool) {
	s.ws()
	start := s.pos
	ok := s.skip()
	return s.b[start:s.pos], ok
}

// skip passes over one value.
func (s *scanner) skip() bool {
	switch s.peek() {
	case '"':
		return s.skipString()
	case '{', '[':
		depth := 0
		for s.pos < len(s.b) {
			switch s.b[s.pos] {
			case '"':
				if !s.skipString() {
					return false
				}
				continue
			case '{', '[':
				depth++
			case '}', ']':
				depth--
				if depth == 0 {
					s.pos++
					return true
				}
			}
			s.pos++
		}
		return false
	case 0:
		return false
	default: // number, true, false, null
		start := s.pos
		for s.pos < len(s.b) {
			switch s.b[s.pos] {
			case ',', '}', ']', ' ', '\t', '\n', '\r':
				return s.pos > start
			}
			s.pos++
		}
		return s.pos > start
	}
}

// skipString passes over a string starting at pos (a quote).
func (s *scanner) skipString() bool {
	i := s.pos + 1
	for {
		j := bytes.IndexByte(s.b[i:], '"')
		if j < 0 {
			return false
		}
		i += j
		// An escaped quote has an odd run of backslashes before it.
		n := 0
		for k := i - 1; k > s.pos && s.b[k] == '\\'; k-- {
			n++
		}
		i++
		if n%2 == 0 {
			s.pos = i
			return true
		}
	}
}
