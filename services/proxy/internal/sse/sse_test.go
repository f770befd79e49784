package sse

import (
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"
)

func TestEventFilterSplitsAnywhere(t *testing.T) {
	stream := "data: {\"a\":1}\n\ndata: {\"drop\":1}\r\n\r\n: comment\ndata: {\"b\":2}\n\ndata: [DONE]"
	want := "data: {\"a\":1}\n\n: comment\ndata: {\"b\":2}\n\ndata: [DONE]"
	for size := 1; size <= len(stream); size++ {
		var out bytes.Buffer
		var datas []string
		f := EventFilter(&out, func(ev []byte) []byte {
			datas = append(datas, string(EventData(ev)))
			if bytes.Contains(ev, []byte("drop")) {
				return nil
			}
			return ev
		})
		for i := 0; i < len(stream); i += size {
			if _, err := f.Write([]byte(stream[i:min(i+size, len(stream))])); err != nil {
				t.Fatal(err)
			}
		}
		if err := f.Close(); err != nil {
			t.Fatal(err)
		}
		if out.String() != want {
			t.Fatalf("size %d: got %q", size, out.String())
		}
		if got := strings.Join(datas, "|"); got != `{"a":1}|{"drop":1}|{"b":2}|[DONE]` {
			t.Fatalf("size %d: data %q", size, got)
		}
	}
}

func TestEventDataMultiline(t *testing.T) {
	if got := string(EventData([]byte("event: x\ndata: a\ndata:b\n\n"))); got != "a\nb" {
		t.Fatalf("got %q", got)
	}
	if EventData([]byte(": ping\n\n")) != nil {
		t.Fatal("comment has data")
	}
}

// One event without a blank line, 64 MB in 32 KiB reads, as a broken
// backend sent it: each byte is examined about once. (Before, every read
// rescanned the whole pending event: about 64 MB × 2048 reads / 2, 68
// billion bytes, 2.56 s at 64 MB and quadratic beyond.)
func TestEventFilterIsLinearInOneHugeEvent(t *testing.T) {
	const total, read = 64 << 20, 32 << 10
	SetMaxEvent(total + 1)
	defer SetMaxEvent(DefaultMaxEvent)
	f := EventFilter(io.Discard, func(ev []byte) []byte { return ev }).(*eventFilter)
	chunk := []byte("data: " + strings.Repeat("x", read-7) + "\n")
	for written := 0; written+len(chunk) <= total; written += len(chunk) {
		if _, err := f.Write(chunk); err != nil {
			t.Fatal(err)
		}
	}
	if limit := int64(total + 2*(total/read)); f.scanned > limit {
		t.Fatalf("scanned %d bytes for %d written: not linear", f.scanned, total)
	}
}

// An event over the bound fails the stream; the events before it were
// written whole, nothing after it is.
func TestEventFilterBoundsOneEvent(t *testing.T) {
	SetMaxEvent(4096)
	defer SetMaxEvent(DefaultMaxEvent)
	var out bytes.Buffer
	f := EventFilter(&out, func(ev []byte) []byte { return ev })
	if _, err := f.Write([]byte("data: first\n\ndata: ")); err != nil {
		t.Fatal(err)
	}
	var err error
	for i := 0; i < 10 && err == nil; i++ {
		_, err = f.Write(bytes.Repeat([]byte("y"), 1000))
	}
	if !errors.Is(err, ErrEventTooLarge) {
		t.Fatalf("after 10 KB of one event: %v", err)
	}
	if _, err := f.Write([]byte("\n\ndata: later\n\n")); !errors.Is(err, ErrEventTooLarge) {
		t.Fatalf("a write after the failure: %v", err)
	}
	if err := f.Close(); !errors.Is(err, ErrEventTooLarge) {
		t.Fatalf("close after the failure: %v", err)
	}
	if out.String() != "data: first\n\n" {
		t.Fatalf("client got %q", out.String())
	}
}

func BenchmarkEventFilterHugeEvent(b *testing.B) {
	const total, read = 64 << 20, 32 << 10
	SetMaxEvent(total + 1)
	defer SetMaxEvent(DefaultMaxEvent)
	chunk := []byte(strings.Repeat("x", read))
	b.SetBytes(total)
	for b.Loop() {
		f := EventFilter(io.Discard, func(ev []byte) []byte { return ev })
		for written := 0; written < total; written += read {
			f.Write(chunk) //nolint:errcheck
		}
	}
}

func BenchmarkEventFilterChatStream(b *testing.B) {
	ev := []byte(`data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"content":"token"},"finish_reason":null}]}` + "\n\n")
	stream := bytes.Repeat(ev, 1000)
	b.SetBytes(int64(len(stream)))
	for b.Loop() {
		f := EventFilter(io.Discard, func(ev []byte) []byte { return ev })
		for i := 0; i < len(stream); i += 1500 {
			f.Write(stream[i:min(i+1500, len(stream))]) //nolint:errcheck
		}
		f.Close() //nolint:errcheck
	}
}
