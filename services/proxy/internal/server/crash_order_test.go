package server

import (
	"bufio"
	"bytes"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"

	"github.com/droverhq/drover/pkg/usage"
)

// gateSink holds every Record until the test lets it return, and says when
// one arrived: the usage publisher's Record returns once the event is on
// the spool, so what a client receives before Record returns is what a
// crash at that instant would leave it with.
type gateSink struct {
	arrived chan usage.Event
	release chan struct{}
	once    sync.Once
}

func newGateSink() *gateSink {
	return &gateSink{arrived: make(chan usage.Event, 16), release: make(chan struct{})}
}

func (g *gateSink) Record(ev usage.Event) {
	g.arrived <- ev
	<-g.release
}

func (g *gateSink) open() { g.once.Do(func() { close(g.release) }) }

// The usage event is recorded before the client has the end of the answer:
// while Record has not returned, a streamed answer's last chunk and a plain
// body's last byte have not reached the client, and both arrive once it
// returns. Each API's stream end is checked: Ollama's done chunk, OpenAI's
// data: [DONE], Anthropic's message_stop.
func TestAnswerEndsOnlyAfterItsEventIsRecorded(t *testing.T) {
	for _, c := range []struct {
		name, path, body string
		stream           bool
		end              string // what the client must not have before Record returned
	}{
		{"ollama stream", "/api/chat", `{"model":"tiny","messages":[{"role":"user","content":"hi"}]}`, true, `"done":true`},
		{"ollama plain", "/api/chat", `{"model":"tiny","stream":false,"messages":[{"role":"user","content":"hi"}]}`, false, ""},
		{"openai stream", "/v1/chat/completions", `{"model":"tiny","stream":true,"messages":[{"role":"user","content":"hi"}]}`, true, "data: [DONE]"},
		{"openai plain", "/v1/chat/completions", `{"model":"tiny","messages":[{"role":"user","content":"hi"}]}`, false, ""},
		{"anthropic stream", "/v1/messages", `{"model":"tiny","max_tokens":50,"stream":true,"messages":[{"role":"user","content":"hi"}]}`, true, "event: message_stop"},
	} {
		t.Run(c.name, func(t *testing.T) {
			gate := newGateSink()
			defer gate.open()
			e := newEnvOpts(t, 1, nil, nil, Options{Sink: gate})
			// The client reads whatever arrives, from its own goroutine: a
			// plain body's head may itself wait in the proxy's buffer.
			type read struct {
				data []byte
				err  error
			}
			reads := make(chan read, 1024)
			contentLength := make(chan int64, 1)
			go func() {
				req, _ := http.NewRequestWithContext(t.Context(), http.MethodPost, e.url+c.path, strings.NewReader(c.body))
				resp, err := http.DefaultClient.Do(req)
				if err != nil {
					reads <- read{nil, err}
					return
				}
				defer resp.Body.Close()
				contentLength <- resp.ContentLength
				br := bufio.NewReader(resp.Body)
				for {
					b := make([]byte, 512)
					n, err := br.Read(b)
					reads <- read{b[:n], err}
					if err != nil {
						return
					}
				}
			}()
			ev := <-gate.arrived
			if ev.Status != 200 || ev.Error {
				t.Fatalf("event %+v", ev)
			}
			// Record has not returned: the body must not be over, nor its
			// end marker there, whatever has been read so far.
			var got []byte
		drain:
			for {
				select {
				case r := <-reads:
					got = append(got, r.data...)
					if r.err != nil {
						t.Fatalf("the body ended (%v) before its event was recorded:\n%s", r.err, got)
					}
				default:
					break drain
				}
			}
			if c.end != "" && bytes.Contains(got, []byte(c.end)) {
				t.Fatalf("the client had %q before its event was recorded", c.end)
			}
			gate.open()
			for r := range reads {
				got = append(got, r.data...)
				if r.err == io.EOF {
					break
				}
				if r.err != nil {
					t.Fatal(r.err)
				}
			}
			if c.end != "" && !bytes.Contains(got, []byte(c.end)) {
				t.Fatalf("the answer's end %q never came:\n%s", c.end, got)
			}
			if cl := <-contentLength; cl > 0 && int64(len(got)) != cl {
				t.Fatalf("%d bytes of %d", len(got), cl)
			}
		})
	}
}
