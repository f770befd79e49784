// Package meter watches response bytes go by on their way to the client
// and keeps their end, where backends report token counts.
package meter

import (
	"bytes"
	"strconv"

	"github.com/droverhq/drover/pkg/usage"
)

// tailSize is how much of a response's end the meter keeps. Ollama and
// OpenAI put token counts in the last few hundred bytes of a response (the
// final NDJSON chunk, the metrics after an embed's vectors, the usage chunk
// before [DONE]); 16 KiB leaves room for a generate's context array.
const tailSize = 16 << 10

// Meter watches response bytes go by and keeps the end of them, so token
// counts can be read when the response is over without buffering it.
type Meter struct {
	buf []byte // the last bytes seen; at most 2*tailSize, at least tailSize when that many were seen
	cut bool   // the bytes are a body that broke off (MarkCut)
}

// MarkCut says that the bytes seen are a body that broke off before its
// end (the backend died mid-body): a count the bytes end in may have lost
// digits, so Count no longer reads it, and the counts readers take as zero
// when a whole answer omits them (Ollama omits a zero count) are unknown
// instead: the body may simply not have reached them (Cut).
func (m *Meter) MarkCut() { m.cut = true }

// Cut reports whether MarkCut was called: a count that is absent is then
// unknown, not zero.
func (m *Meter) Cut() bool { return m.cut }

// Write observes p. It never fails.
func (m *Meter) Write(p []byte) (int, error) {
	if len(p) >= tailSize {
		m.buf = append(m.buf[:0], p[len(p)-tailSize:]...)
		return len(p), nil
	}
	if len(m.buf)+len(p) > 2*tailSize {
		n := copy(m.buf, m.buf[len(m.buf)-tailSize:])
		m.buf = m.buf[:n]
	}
	m.buf = append(m.buf, p...)
	return len(p), nil
}

// Tail returns the bytes kept.
func (m *Meter) Tail() []byte { return m.buf }

// Count returns the integer value of the last top-level-looking "key":
// in the tail, at most usage.MaxTokens. A quoted key followed by a colon cannot occur inside a JSON
// string (its quotes would be escaped), and the counts come after any nested
// content, so the last occurrence is the response's own.
//
// In a body that broke off (MarkCut) a number that runs to the end of the
// bytes is not read: it may have been cut inside its digits.
func (m *Meter) Count(key string) (int64, bool) {
	return lastInt(m.buf, key, m.cut)
}

func lastInt(buf []byte, key string, cut bool) (int64, bool) {
	pat := make([]byte, 0, len(key)+3)
	pat = append(pat, '"')
	pat = append(pat, key...)
	pat = append(pat, '"')
	i := bytes.LastIndex(buf, pat)
	if i < 0 {
		return 0, false
	}
	rest := bytes.TrimLeft(buf[i+len(pat):], " \t\r\n")
	if len(rest) == 0 || rest[0] != ':' {
		return 0, false
	}
	rest = bytes.TrimLeft(rest[1:], " \t\r\n")
	end := 0
	for end < len(rest) && rest[end] >= '0' && rest[end] <= '9' {
		end++
	}
	if end == 0 || cut && end == len(rest) {
		return 0, false
	}
	// A count past usage.MaxTokens (a backend's bug or lie) is saturated,
	// so that totals stay true to every other request's.
	if end > 12 {
		return usage.MaxTokens, true
	}
	n, err := strconv.ParseInt(string(rest[:end]), 10, 64)
	return min(n, usage.MaxTokens), err == nil
}

// Has reports whether "key": value appears in the tail with the given raw
// JSON value, e.g. Has("done", "true").
func (m *Meter) Has(key, value string) bool {
	pat := []byte(`"` + key + `":`)
	i := bytes.LastIndex(m.buf, pat)
	if i < 0 {
		return false
	}
	return bytes.HasPrefix(bytes.TrimLeft(m.buf[i+len(pat):], " "), []byte(value))
}

// Reset empties the meter for reuse.
func (m *Meter) Reset() { m.buf, m.cut = m.buf[:0], false }
