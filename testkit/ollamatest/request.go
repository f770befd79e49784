package ollamatest

import (
	"encoding/json"
	"fmt"
	"math"
	"net/http"
	"reflect"
	"time"
)

// Request bodies: only the fields the fake acts on. Unknown fields are
// ignored, as Ollama's decoder does.

type message struct {
	Role     string `json:"role"`
	Content  string `json:"content"`
	Thinking string `json:"thinking,omitempty"`
}

type options struct {
	NumPredict any `json:"num_predict"`
}

type chatRequest struct {
	Model     string            `json:"model"`
	Messages  []message         `json:"messages"`
	Stream    *bool             `json:"stream"`
	KeepAlive *duration         `json:"keep_alive"`
	Tools     []json.RawMessage `json:"tools"`
	Options   *options          `json:"options"`
	Think     *thinkValue       `json:"think"`
	Fake      *Fault            `json:"fake"`
}

type generateRequest struct {
	Model     string      `json:"model"`
	Prompt    string      `json:"prompt"`
	Suffix    string      `json:"suffix"`
	System    string      `json:"system"`
	Raw       bool        `json:"raw"`
	Stream    *bool       `json:"stream"`
	KeepAlive *duration   `json:"keep_alive"`
	Options   *options    `json:"options"`
	Think     *thinkValue `json:"think"`
	Fake      *Fault      `json:"fake"`
}

// duration is api.Duration: seconds as a number or a Go duration string;
// negative means forever.
type duration struct{ time.Duration }

func (d *duration) UnmarshalJSON(b []byte) error {
	var v any
	if err := json.Unmarshal(b, &v); err != nil {
		return err
	}
	d.Duration = 5 * time.Minute
	switch t := v.(type) {
	case float64:
		if t < 0 {
			d.Duration = forever
		} else {
			d.Duration = time.Duration(t * float64(time.Second))
		}
	case string:
		var err error
		if d.Duration, err = time.ParseDuration(t); err != nil {
			return err
		}
		if d.Duration < 0 {
			d.Duration = forever
		}
	default:
		//lint:ignore ST1005 Ollama's own wording, capital and all
		return fmt.Errorf("Unsupported type: '%s'", reflect.TypeOf(v))
	}
	return nil
}

// thinkValue is api.ThinkValue: true/false or "high"/"medium"/"low".
type thinkValue struct {
	set, on  bool
	isString bool
	s        string
}

func (t *thinkValue) UnmarshalJSON(data []byte) error {
	var b bool
	if err := json.Unmarshal(data, &b); err == nil {
		*t = thinkValue{set: true, on: b}
		return nil
	}
	var s string
	if err := json.Unmarshal(data, &s); err == nil {
		if s != "high" && s != "medium" && s != "low" {
			return fmt.Errorf("invalid think value: %q (must be \"high\", \"medium\", \"low\", true, or false)", s)
		}
		*t = thinkValue{set: true, on: true, isString: true, s: s}
		return nil
	}
	return fmt.Errorf("think must be a boolean or string (\"high\", \"medium\", \"low\", true, or false)")
}

func (t *thinkValue) enabled() bool { return t != nil && t.on }

func (s *Server) keepAlive(d *duration) time.Duration {
	if d == nil {
		return s.cfg.KeepAlive
	}
	return d.Duration
}

// countWords counts whitespace-separated words without allocating.
func countWords(s string) int {
	n, in := 0, false
	for i := 0; i < len(s); i++ {
		c := s[i]
		space := c == ' ' || c == '\n' || c == '\t' || c == '\r' || c == '\v' || c == '\f'
		if !space && !in {
			n++
		}
		in = !space
	}
	return n
}

func (o *options) numPredict() (float64, bool) {
	if o == nil {
		return 0, false
	}
	n, ok := o.NumPredict.(float64)
	return n, ok
}

// validOptions answers Ollama's 500 for a mistyped option it acts on.
func validOptions(w http.ResponseWriter, o *options) bool {
	if o == nil || o.NumPredict == nil {
		return true
	}
	if _, ok := o.NumPredict.(float64); !ok {
		writeError(w, http.StatusInternalServerError, `option "num_predict" must be of type integer`)
		return false
	}
	return true
}

// plan is what one generation will produce, fixed before any byte is written.
type plan struct {
	promptTokens int
	chunks       int // content chunks == eval_count
	thinking     int // how many of the chunks carry thinking instead of content
	doneReason   string
	delay        time.Duration
	fault        *Fault
}

func (s *Server) makePlan(promptTokens int, opts *options, f *Fault, think bool) plan {
	p := plan{promptTokens: promptTokens, doneReason: "stop", fault: f,
		chunks: int(s.chunks.Load()), delay: time.Duration(s.chunkDelay.Load())}
	if n, ok := opts.numPredict(); ok && n >= 0 {
		p.chunks = int(min(n, math.MaxInt32))
		p.doneReason = "length"
	}
	if f != nil {
		if f.Chunks != nil {
			p.chunks, p.doneReason = max(*f.Chunks, 0), "stop"
		}
		if f.DelayMs > 0 {
			p.delay = time.Duration(f.DelayMs) * time.Millisecond
		}
	}
	if think {
		p.thinking = p.chunks / 2
	}
	return p
}
