package sse

import (
	"bytes"
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
