package ollamatest

import (
	"strconv"
	"time"
)

// Hand-written JSON appenders for the streaming hot path. They produce the
// same bytes encoding/json would, without reflection; strings are quoted by
// jsonw.AppendString.

func appendTime(b []byte, t time.Time) []byte {
	b = append(b, '"')
	b = t.AppendFormat(b, time.RFC3339Nano)
	return append(b, '"')
}

func appendIntField(b []byte, name string, v int64) []byte {
	b = append(b, ',', '"')
	b = append(b, name...)
	b = append(b, '"', ':')
	return strconv.AppendInt(b, v, 10)
}
