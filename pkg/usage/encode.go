package usage

import (
	"strconv"
	"time"

	"github.com/droverhq/drover/pkg/jsonw"
)

// AppendJSON appends ev's wire form to b: byte for byte what json.Marshal
// produces for an Event, without reflection. Every proxied request encodes
// one, so it is on the hot path.
func AppendJSON(b []byte, ev *Event) []byte {
	b = append(b, `{"schema":`...)
	b = jsonw.AppendString(b, ev.Schema)
	b = append(b, `,"id":`...)
	b = jsonw.AppendString(b, ev.ID)
	b = append(b, `,"time":"`...)
	b = ev.Time.AppendFormat(b, time.RFC3339Nano)
	b = append(b, '"')
	if ev.Replica != "" {
		b = append(b, `,"replica":`...)
		b = jsonw.AppendString(b, ev.Replica)
	}
	b = append(b, `,"endpoint":`...)
	b = jsonw.AppendString(b, ev.Endpoint)
	b = append(b, `,"model":`...)
	b = jsonw.AppendString(b, ev.Model)
	if ev.BackendModel != "" {
		b = append(b, `,"backend_model":`...)
		b = jsonw.AppendString(b, ev.BackendModel)
	}
	b = append(b, `,"api_key":`...)
	b = jsonw.AppendString(b, ev.APIKey)
	b = append(b, `,"route":`...)
	b = jsonw.AppendString(b, ev.Route)
	if ev.API != "" {
		b = append(b, `,"api":`...)
		b = jsonw.AppendString(b, ev.API)
	}
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
	b = jsonw.AppendFloat(b, ev.TTFBMs)
	b = append(b, `,"duration_ms":`...)
	b = jsonw.AppendFloat(b, ev.DurationMs)
	b = append(b, `,"attempts":`...)
	b = strconv.AppendInt(b, int64(ev.Attempts), 10)
	if ev.Partial {
		b = append(b, `,"partial":true`...)
	}
	return append(b, '}')
}

func appendCount(b []byte, n *int64) []byte {
	if n == nil {
		return append(b, "null"...)
	}
	return strconv.AppendInt(b, *n, 10)
}
