package ingest

import (
	"encoding/json"
	"fmt"
	"strconv"
	"unicode/utf8"

	"github.com/droverhq/drover/pkg/usage"
)

// Decode parses one usage message and checks it with usage.Validate.
//
// Events as proxies encode them take a fast path that reads the flat object
// directly; anything it does not recognise (escapes in strings, unknown or
// differently cased keys, nulls where a value is expected, unusual numbers)
// goes to encoding/json instead, so the result is always what
// json.Unmarshal would give (FuzzDecodeMatchesEncodingJSON checks this).
func Decode(data []byte) (usage.Event, error) {
	var ev usage.Event
	if !decodeFast(data, &ev) {
		ev = usage.Event{}
		if err := json.Unmarshal(data, &ev); err != nil {
			return ev, fmt.Errorf("decoding usage event: %w", err)
		}
	}
	return ev, usage.Validate(ev)
}

// decodeFast fills ev from data and reports true only where json.Unmarshal
// would succeed with the same result; on false ev is garbage.
func decodeFast(data []byte, ev *usage.Event) bool {
	// One allocation for every string field: they are substrings of s.
	s := string(data)
	d := fastDecoder{s: s}
	if !d.byte('{') {
		return false
	}
	if d.peek() == '}' {
		d.i++
		return d.end()
	}
	for {
		key, ok := d.str()
		if !ok || !d.byte(':') {
			return false
		}
		d.ws()
		switch key {
		case "schema":
			ev.Schema, ok = d.str()
		case "id":
			ev.ID, ok = d.str()
		case "replica":
			ev.Replica, ok = d.str()
		case "endpoint":
			ev.Endpoint, ok = d.str()
		case "model":
			ev.Model, ok = d.str()
		case "backend_model":
			ev.BackendModel, ok = d.str()
		case "api_key":
			ev.APIKey, ok = d.str()
		case "route":
			ev.Route, ok = d.str()
		case "api":
			ev.API, ok = d.str()
		case "time":
			start := d.i
			if _, ok = d.str(); ok {
				// What encoding/json calls too.
				ok = ev.Time.UnmarshalJSON(data[start:d.i]) == nil
			}
		case "status":
			ev.Status, ok = d.int()
		case "attempts":
			ev.Attempts, ok = d.int()
		case "error":
			ev.Error, ok = d.bool()
		case "stream":
			ev.Stream, ok = d.bool()
		case "partial":
			ev.Partial, ok = d.bool()
		case "input_tokens":
			ev.InputTokens, ok = d.int64Ptr()
		case "output_tokens":
			ev.OutputTokens, ok = d.int64Ptr()
		case "ttfb_ms":
			ev.TTFBMs, ok = d.float()
		case "duration_ms":
			ev.DurationMs, ok = d.float()
		default:
			return false
		}
		if !ok {
			return false
		}
		d.ws()
		switch d.peek() {
		case ',':
			d.i++
		case '}':
			d.i++
			return d.end()
		default:
			return false
		}
	}
}

// fastDecoder reads JSON tokens from s at i; every method returns false on
// anything outside the narrow form decodeFast accepts.
type fastDecoder struct {
	s string
	i int
}

func (d *fastDecoder) ws() {
	for d.i < len(d.s) {
		switch d.s[d.i] {
		case ' ', '\t', '\n', '\r':
			d.i++
		default:
			return
		}
	}
}

func (d *fastDecoder) peek() byte {
	d.ws()
	if d.i < len(d.s) {
		return d.s[d.i]
	}
	return 0
}

func (d *fastDecoder) byte(c byte) bool {
	if d.peek() != c {
		return false
	}
	d.i++
	return true
}

func (d *fastDecoder) end() bool {
	d.ws()
	return d.i == len(d.s)
}

// str reads a string without escapes or control characters, valid UTF-8.
func (d *fastDecoder) str() (string, bool) {
	if d.peek() != '"' {
		return "", false
	}
	start := d.i + 1
	ascii := true
	for j := start; j < len(d.s); j++ {
		switch c := d.s[j]; {
		case c == '"':
			v := d.s[start:j]
			if !ascii && !utf8.ValidString(v) {
				return "", false // encoding/json would substitute U+FFFD
			}
			d.i = j + 1
			return v, true
		case c == '\\' || c < 0x20:
			return "", false
		case c >= 0x80:
			ascii = false
		}
	}
	return "", false
}

// number reads a JSON number literal; integral says it had no fraction or
// exponent.
func (d *fastDecoder) number() (lit string, integral, ok bool) {
	s, i := d.s, d.i
	start := i
	if i < len(s) && s[i] == '-' {
		i++
	}
	switch {
	case i < len(s) && s[i] == '0':
		i++
	case i < len(s) && s[i] >= '1' && s[i] <= '9':
		for i < len(s) && s[i] >= '0' && s[i] <= '9' {
			i++
		}
	default:
		return "", false, false
	}
	integral = true
	if i < len(s) && s[i] == '.' {
		integral = false
		i++
		if i == len(s) || s[i] < '0' || s[i] > '9' {
			return "", false, false
		}
		for i < len(s) && s[i] >= '0' && s[i] <= '9' {
			i++
		}
	}
	if i < len(s) && (s[i] == 'e' || s[i] == 'E') {
		integral = false
		i++
		if i < len(s) && (s[i] == '+' || s[i] == '-') {
			i++
		}
		if i == len(s) || s[i] < '0' || s[i] > '9' {
			return "", false, false
		}
		for i < len(s) && s[i] >= '0' && s[i] <= '9' {
			i++
		}
	}
	d.i = i
	return s[start:i], integral, true
}

func (d *fastDecoder) int64() (int64, bool) {
	lit, integral, ok := d.number()
	if !ok || !integral {
		return 0, false
	}
	v, err := strconv.ParseInt(lit, 10, 64)
	return v, err == nil
}

func (d *fastDecoder) int() (int, bool) {
	v, ok := d.int64()
	return int(v), ok && int64(int(v)) == v
}

func (d *fastDecoder) int64Ptr() (*int64, bool) {
	if d.literal("null") {
		return nil, true
	}
	v, ok := d.int64()
	if !ok {
		return nil, false
	}
	return &v, true
}

func (d *fastDecoder) float() (float64, bool) {
	lit, _, ok := d.number()
	if !ok {
		return 0, false
	}
	v, err := strconv.ParseFloat(lit, 64)
	return v, err == nil
}

func (d *fastDecoder) bool() (bool, bool) {
	switch {
	case d.literal("true"):
		return true, true
	case d.literal("false"):
		return false, true
	}
	return false, false
}

// literal consumes word if it comes next, as a whole token.
func (d *fastDecoder) literal(word string) bool {
	end := d.i + len(word)
	if end > len(d.s) || d.s[d.i:end] != word {
		return false
	}
	if end < len(d.s) {
		switch c := d.s[end]; {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '_':
			return false
		}
	}
	d.i = end
	return true
}
