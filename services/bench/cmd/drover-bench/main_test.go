package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"go.uber.org/goleak"

	"github.com/droverhq/drover/services/bench/internal/bareproxy"
	"github.com/droverhq/drover/services/bench/internal/report"
	"github.com/droverhq/drover/services/bench/internal/stubollama"
)

func TestMain(m *testing.M) {
	// run starts the bare proxy by re-running its own executable, which in
	// a test is this binary.
	if len(os.Args) > 1 && os.Args[1] == serveBare {
		if err := runBare(os.Args[2:]); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	goleak.VerifyTestMain(m)
}

// TestRunEndToEnd runs the whole tool against a stub backend that fails
// some requests, with a second bare proxy standing in for Drover.
func TestRunEndToEnd(t *testing.T) {
	stub := &stubollama.Server{FailEvery: 100, FailMode: stubollama.FailTruncate}
	backend := httptest.NewServer(stub)
	defer backend.Close()
	u, _ := url.Parse(backend.URL)
	drover, err := bareproxy.Start("127.0.0.1:0", u)
	if err != nil {
		t.Fatal(err)
	}
	defer drover.Close(context.Background())

	dir := t.TempDir()
	jsonPath := filepath.Join(dir, "out.json")
	o, err := parseFlags([]string{
		"-backend-url", backend.URL, "-drover-url", drover.URL,
		"-workloads", "chat-stream,openai-stream", "-duration", "250ms", "-warmup", "0",
		"-rounds", "1", "-conns", "8", "-rate", "200", "-json", jsonPath, "-logs", dir,
	})
	if err != nil {
		t.Fatal(err)
	}
	var stdout, stderr bytes.Buffer
	if err := run(context.Background(), o, &stdout, &stderr); err != nil {
		t.Fatalf("run: %v\n%s", err, stderr.String())
	}
	md := stdout.String()
	for _, want := range []string{"| direct | closed c=8 | chat-stream |", "| drover | open 200/s | openai-stream |", "throughput", "added p99", "read body: unexpected EOF"} {
		if !strings.Contains(md, want) {
			t.Errorf("output lacks %q:\n%s", want, md)
		}
	}
	b, err := os.ReadFile(jsonPath)
	if err != nil {
		t.Fatal(err)
	}
	var doc report.Document
	if err := json.Unmarshal(b, &doc); err != nil {
		t.Fatal(err)
	}
	var ok, errs int
	for _, r := range doc.Rows {
		ok += r.Summary.OK
		errs += r.Summary.Errors
	}
	if len(doc.Rows) != 2*2*3 || int64(ok+errs) != stub.Served() || int64(errs) != stub.Failed() {
		t.Errorf("%d rows, ok %d errors %d; backend served %d failed %d", len(doc.Rows), ok, errs, stub.Served(), stub.Failed())
	}
}

func TestParseFlags(t *testing.T) {
	cases := []struct {
		args []string
		ok   bool
	}{
		{[]string{"-backend-url", "http://x"}, true},
		{[]string{}, false},
		{[]string{"-backend-url", "http://x", "-backend-bin", "b"}, false},
		{[]string{"-backend-url", "http://x", "-drover", "d", "-drover-url", "http://y"}, false},
		{[]string{"-backend-url", "http://x", "-pick", "worst"}, false},
		{[]string{"-backend-url", "http://x", "-drover-nats"}, false},
		{[]string{"-backend-url", "http://x", "-drover-url", "http://y", "-drover-nats"}, false},
		{[]string{"-backend-url", "http://x", "-drover", "d", "-drover-nats"}, true},
		{[]string{"-backend-url", "http://x", "-targets", "drover, drover+nats"}, true},
		{[]string{"-backend-url", "http://x", "-targets", "all"}, true},
		{[]string{"-backend-url", "http://x", "-targets", "drover,nats"}, false},
	}
	for _, c := range cases {
		if _, err := parseFlags(c.args); (err == nil) != c.ok {
			t.Errorf("%v: err=%v", c.args, err)
		}
	}
	if _, err := parseModes("closed,open", 64, 2000); err != nil {
		t.Error(err)
	}
	if _, err := parseModes("sideways", 64, 2000); err == nil {
		t.Error("unknown mode accepted")
	}
}
