package conformance

import (
	"bytes"
	"errors"
	"fmt"
	"sort"
	"strings"
	"testing"

	"github.com/anthropics/anthropic-sdk-go/v2"
	"github.com/anthropics/anthropic-sdk-go/v2/option"

	"github.com/droverhq/drover/testkit/ollamatest"
)

// Anthropic's Messages API (POST /v1/messages), which Ollama serves through
// a middleware: real Ollama directly against Drover in front of it, and
// against the fake. Answers carry random ids (msg_, req_, call_) and
// sampled text, so they are compared by their Anthropic meaning: status,
// Content-Type, JSON shape, the event sequence of a stream (runs of
// content_block_delta folded), each event's shape, and the values that do
// not depend on sampling (types, roles, errors, stop reasons and counts of
// tiny-fixed, which never stops early).

type messagesCase struct {
	name, body string
	// sampled: a model that may stop early (tiny, tiny2), so counts and
	// stop reasons are sampling too.
	sampled bool
}

const messagesAsk = `"messages":[{"role":"user","content":"hello there"}]`

var messagesCases = []messagesCase{
	{"message", `{"model":"tiny-fixed","max_tokens":3,` + messagesAsk + `}`, false},
	{"stream", `{"model":"tiny-fixed","max_tokens":3,"stream":true,` + messagesAsk + `}`, false},
	{"system and content blocks", `{"model":"tiny-fixed","max_tokens":2,"system":[{"type":"text","text":"be brief"}],"messages":[{"role":"user","content":[{"type":"text","text":"hello"},{"type":"text","text":"there"}]}]}`, false},
	{"tools", `{"model":"tiny2","max_tokens":2,"tools":[{"name":"get_weather","description":"weather","input_schema":{"type":"object","properties":{"city":{"type":"string"}}}}],` + messagesAsk + `}`, true},
	{"tools on a model without them", `{"model":"tiny","max_tokens":2,"tools":[{"name":"f","input_schema":{"type":"object"}}],` + messagesAsk + `}`, false},
	{"unknown model", `{"model":"nope","max_tokens":3,` + messagesAsk + `}`, false},
	{"unknown model streamed", `{"model":"nope","max_tokens":3,"stream":true,` + messagesAsk + `}`, false},
	{"malformed", `{"model":`, false},
	{"empty body", ``, false},
	{"missing model", `{"max_tokens":3,` + messagesAsk + `}`, false},
	{"missing max_tokens", `{"model":"tiny-fixed",` + messagesAsk + `}`, false},
	{"no messages", `{"model":"tiny-fixed","max_tokens":3,"messages":[]}`, false},
	{"max_tokens of the wrong type", `{"model":"tiny-fixed","max_tokens":"3",` + messagesAsk + `}`, false},
}

func TestMessagesConformance(t *testing.T) {
	need(t)
	d := newDrover(t, nil)
	for _, c := range messagesCases {
		t.Run(c.name, func(t *testing.T) {
			direct := send(t, "POST", srvA.url+"/v1/messages", c.body)
			via := send(t, "POST", d.url+"/v1/messages", c.body)
			for _, diff := range compareMessages(direct, via, !c.sampled, !c.sampled) {
				t.Errorf("%s: %s", c.body, diff)
			}
			if testing.Verbose() {
				t.Logf("%d %s %s", direct.status, direct.header.Get("Content-Type"), short(string(direct.body)))
			}
		})
	}
}

// TestMessagesFakeMatchesOllama keeps testkit/ollamatest's /v1/messages
// honest: the same shapes, sequences, errors and stop reasons; its counts
// follow its own rule.
func TestMessagesFakeMatchesOllama(t *testing.T) {
	need(t)
	fake := ollamatest.New(ollamatest.Config{})
	if err := fake.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(fake.Close)
	for _, c := range messagesCases {
		t.Run(c.name, func(t *testing.T) {
			direct := send(t, "POST", srvA.url+"/v1/messages", c.body)
			faked := send(t, "POST", fake.URL()+"/v1/messages", c.body)
			for _, diff := range compareMessages(direct, faked, false, !c.sampled) {
				t.Errorf("%s: %s", c.body, strings.ReplaceAll(diff, "through Drover", "from the fake"))
			}
		})
	}
}

// TestMessagesAnthropicSDK: the official Anthropic Go SDK through Drover in
// front of the real servers, a message and streams, and Drover's counts
// equal to the usage the SDK read. (The tiny models never call tools, so
// tool use is covered against the fake, in internal/anthropicapi.)
func TestMessagesAnthropicSDK(t *testing.T) {
	need(t)
	d := newDrover(t, nil)
	client := anthropic.NewClient(option.WithBaseURL(d.url), option.WithAPIKey("unused"), option.WithMaxRetries(0))
	params := func(model string, n int64) anthropic.MessageNewParams {
		return anthropic.MessageNewParams{Model: model, MaxTokens: n,
			Messages: []anthropic.MessageParam{anthropic.NewUserMessage(anthropic.NewTextBlock("hello there"))}}
	}
	var in, out int64
	msg, err := client.Messages.New(t.Context(), params("tiny-fixed", 4))
	if err != nil {
		t.Fatal(err)
	}
	if msg.StopReason != anthropic.StopReasonMaxTokens || msg.Usage.OutputTokens != 4 || msg.Usage.InputTokens == 0 || msg.Content[0].AsText().Text == "" {
		t.Fatalf("message: %s", msg.RawJSON())
	}
	in, out = in+msg.Usage.InputTokens, out+msg.Usage.OutputTokens
	for _, model := range []string{"tiny-fixed", "tiny", "tiny2"} {
		stream := client.Messages.NewStreaming(t.Context(), params(model, 6))
		var acc anthropic.Message
		for stream.Next() {
			if err := acc.Accumulate(stream.Current()); err != nil {
				t.Fatal(err)
			}
		}
		if err := stream.Err(); err != nil {
			t.Fatalf("%s: %v", model, err)
		}
		if acc.Usage.OutputTokens == 0 || acc.Usage.OutputTokens > 6 || (model == "tiny-fixed" && acc.Usage.OutputTokens != 6) {
			t.Fatalf("%s stream: usage %+v", model, acc.Usage)
		}
		in, out = in+acc.Usage.InputTokens, out+acc.Usage.OutputTokens
	}
	var gotIn, gotOut int64
	for _, models := range d.srv.Totals.Snapshot() {
		for _, c := range models {
			gotIn, gotOut = gotIn+c.InputTokens, gotOut+c.OutputTokens
		}
	}
	if gotIn != in || gotOut != out {
		t.Fatalf("Drover counted %d in, %d out; the SDK read %d, %d", gotIn, gotOut, in, out)
	}
	_, err = client.Messages.New(t.Context(), params("nope", 4))
	var apiErr *anthropic.Error
	if !errors.As(err, &apiErr) || apiErr.StatusCode != 404 || !strings.Contains(apiErr.RawJSON(), `"not_found_error"`) {
		t.Fatalf("unknown model: %v", err)
	}
}

// messagesKept are the fields compared by value; counts only when counts
// is set (Drover against the same Ollama, as the fake counts its own way),
// stop reasons only when fixed (a model that cannot stop early).
var messagesKept = map[string]bool{"type": true, "role": true, "model": true, "message": true, "index": true, "name": true}

var messagesCounts = map[string]bool{"input_tokens": true, "output_tokens": true}

func compareMessages(direct, via reply, counts, fixed bool) []string {
	var diffs []string
	errorf := func(format string, args ...any) { diffs = append(diffs, fmt.Sprintf(format, args...)) }
	if direct.status != via.status {
		errorf("status %d directly, %d through Drover (bodies %q / %q)", direct.status, via.status, short(string(direct.body)), short(string(via.body)))
		return diffs
	}
	ct := direct.header.Get("Content-Type")
	if b := via.header.Get("Content-Type"); ct != b {
		errorf("Content-Type %q directly, %q through Drover", ct, b)
	}
	if !strings.HasPrefix(ct, "text/event-stream") {
		x, err1 := decode(direct.body)
		y, err2 := decode(via.body)
		if err1 != nil || err2 != nil {
			if !bytes.Equal(direct.body, via.body) {
				errorf("body %q directly, %q through Drover", short(string(direct.body)), short(string(via.body)))
			}
			return diffs
		}
		compareMessageValue("", x, y, counts, fixed, errorf)
		return diffs
	}
	dn, dd, err1 := messageEvents(direct.body)
	vn, vd, err2 := messageEvents(via.body)
	if err1 != nil || err2 != nil {
		errorf("streams not SSE: %v / %v", err1, err2)
		return diffs
	}
	if a, b := foldRuns(dn), foldRuns(vn); a != b {
		errorf("events %s directly, %s through Drover", a, b)
		return diffs
	}
	// Each event against the direct event of the same name; the last of a
	// name carries the counts (message_delta's usage).
	byName := map[string]any{}
	for i, n := range dn {
		byName[n] = dd[i]
	}
	for i, n := range vn {
		compareMessageValue(n, byName[n], vd[i], counts && n != "content_block_delta", fixed, errorf)
	}
	return diffs
}

// compareMessageValue compares shapes everywhere and values of the kept
// fields.
func compareMessageValue(p string, direct, via any, counts, fixed bool, errorf func(string, ...any)) {
	if kindOf(direct) != kindOf(via) {
		errorf("%s: type %s directly, %s through Drover (%v vs %v)", p, kindOf(direct), kindOf(via), short(direct), short(via))
		return
	}
	leaf := p[strings.LastIndex(p, ".")+1:]
	switch x := direct.(type) {
	case map[string]any:
		y := via.(map[string]any)
		keys := map[string]bool{}
		for k := range x {
			keys[k] = true
		}
		for k := range y {
			keys[k] = true
		}
		sorted := make([]string, 0, len(keys))
		for k := range keys {
			sorted = append(sorted, k)
		}
		sort.Strings(sorted)
		for _, k := range sorted {
			a, inA := x[k]
			b, inB := y[k]
			switch {
			case !inA:
				errorf("%s: field only through Drover", join(p, k))
			case !inB:
				errorf("%s: field missing through Drover", join(p, k))
			default:
				compareMessageValue(join(p, k), a, b, counts, fixed, errorf)
			}
		}
	case []any:
		y := via.([]any)
		if len(x) > 0 && len(y) > 0 {
			compareMessageValue(p+"[]", x[0], y[0], counts, fixed, errorf)
		} else if len(x) != len(y) {
			errorf("%s: %d entries directly, %d through Drover", p, len(x), len(y))
		}
	default:
		if (messagesKept[leaf] || (counts && messagesCounts[leaf]) || (fixed && leaf == "stop_reason")) && fmt.Sprint(direct) != fmt.Sprint(via) {
			errorf("%s: %v directly, %v through Drover", p, short(direct), short(via))
		}
	}
}

// messageEvents splits an Anthropic SSE stream into event names and data.
func messageEvents(b []byte) (names []string, data []any, err error) {
	for _, frame := range strings.Split(strings.TrimSuffix(string(b), "\n\n"), "\n\n") {
		name, rest, ok := strings.Cut(frame, "\n")
		if !ok || !strings.HasPrefix(name, "event: ") || !strings.HasPrefix(rest, "data: ") {
			return nil, nil, fmt.Errorf("not an event: %q", short(frame))
		}
		v, err := decode([]byte(rest[len("data: "):]))
		if err != nil {
			return nil, nil, err
		}
		names, data = append(names, name[len("event: "):]), append(data, v)
	}
	return names, data, nil
}

// foldRuns is the event sequence with runs of one name folded: "a b+ c".
func foldRuns(names []string) string {
	var out []string
	for i, n := range names {
		if i > 0 && names[i-1] == n {
			if !strings.HasSuffix(out[len(out)-1], "+") {
				out[len(out)-1] += "+"
			}
			continue
		}
		out = append(out, n)
	}
	return strings.Join(out, " ")
}
