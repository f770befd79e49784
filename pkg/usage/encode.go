package usage

import (
	"math"
	"strconv"
	"time"
	"unicode/utf8"
)

// AppendJSON appends ev's wire form to b: byte for byte what json.Marshal
// produces for an Event, without reflection. Every proxied request encodes
// one, so it is on the hot path.
func AppendJSON(b []byte, ev *Event) []byte {
	b = append(b, `{"schema":`...)
	b = appendString(b, ev.Schema)
	b = append(b, `,"id":`...)
	b = appendString(b, ev.ID)
	b = append(b, `,"time":"`...)
	b = ev.Time.AppendFormat(b, time.RFC3339Nano)
	b = append(b, '"')
	if ev.Replica != "" {
		b = append(b, `,"replica":`...)
		b = appendString(b, ev.Replica)
	}
	b = append(b, `,"endpoint":`...)
	b = appendString(b, ev.Endpoint)
	b = append(b, `,"model":`...)
	b = appendString(b, ev.Model)
	if ev.BackendModel != "" {
		b = append(b, `,"backend_model":`...)
		b = appendString(b, ev.BackendModel)
	}
	b = append(b, `,"api_key":`...)
	b = appendString(b, ev.APIKey)
	b = append(b, `,"route":`...)
	b = appendString(b, ev.Route)
	b = append(b, `,"status":`...)
	b = strconv.AppendInt(b, int64(ev.Status), 10)
	b = append(b, `,"error":`...)
	b = strconv.AppendBool(b, ev.Error)
	b = append(b, `,"input_tokens":`...)
	b = appendCount(b, ev.InputTokens)
	b = append(b, `,"output_tokens":`...)
	b = appendCount(b, ev.OutputTokens)
	b = append(b, `,"stream":`...)
	b = strconv.AppendBool(b, ev.Stream)
	b = append(b, `,"ttfb_ms":`...)
	b = appendFloat(b, ev.TTFBMs)
	b = append(b, `,"duration_ms":`...)
	b = appendFloat(b, ev.DurationMs)
	b = append(b, `,"attempts":`...)
	b = strconv.AppendInt(b, int64(ev.Attempts), 10)
	return append(b, '}')
}

func appendCount(b []byte, n *int64) []byte {
	if n == nil {
		return append(b, "null"...)
	}
	return strconv.AppendInt(b, *n, 10)
}

// appendFloat formats like encoding/json: shortest representation, with
// exponents only for very small or very large values. NaN and infinities,
// which JSON cannot carry, become 0.
func appendFloat(b []byte, f float64) []byte {
	if math.IsNaN(f) || math.IsInf(f, 0) {
		return append(b, '0')
	}
	format := byte('f')
	if abs := math.Abs(f); abs != 0 && (abs < 1e-6 || abs >= 1e21) {
		format = 'e'
	}
	b = strconv.AppendFloat(b, f, format, -1, 64)
	if format == 'e' {
		// e-09 → e-9, as encoding/json writes it.
		if n := len(b); n >= 4 && b[n-4] == 'e' && b[n-3] == '-' && b[n-2] == '0' {
			b[n-2] = b[n-1]
			b = b[:n-1]
		}
	}
	return b
}

const hexDigits = "0123456789abcdef"

// appendString quotes s the way encoding/json does by default: HTML
// characters, control characters, U+2028 and U+2029 escaped, invalid UTF-8
// replaced by U+FFFD.
func appendString(b []byte, s string) []byte {
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' && c != '<' && c != '>' && c != '&' {
				i++
				continue
			}
			b = append(b, s[start:i]...)
			switch c {
			case '"', '\\':
				b = append(b, '\\', c)
			case '\b':
				b = append(b, '\\', 'b')
			case '\f':
				b = append(b, '\\', 'f')
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			case '\t':
				b = append(b, '\\', 't')
			default:
				b = append(b, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			b = append(b, s[start:i]...)
			b = append(b, `\ufffd`...)
			i += size
			start = i
			continue
		}
		if r == '\u2028' || r == '\u2029' {
			b = append(b, s[start:i]...)
			b = append(b, '\\', 'u', '2', '0', '2', hexDigits[r&0xf])
			i += size
			start = i
			continue
		}
		i += size
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}
