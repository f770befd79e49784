package conformance

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/droverhq/drover/testkit/ollamatest"
)

// fakeDifferences are where testkit/ollamatest is simpler than Ollama on
// purpose. They concern the fake only; Drover's are allowedDifferences.
var fakeDifferences = []allowance{}

// fakeSkips are cases the fake cannot answer like a real server.
var fakeSkips = map[string]string{
	"blob head present":   "the fake has its own blobs",
	"create from unknown": "offline, real Ollama's error names the network failure",
}

// TestFakeMatchesOllama sends the same requests to real Ollama and to
// testkit/ollamatest, so that the fast tests built on the fake stay honest:
// status, Content-Type, JSON keys and types, stream chunk shapes, and the
// values that do not depend on real weights (errors, names, done, status).
func TestFakeMatchesOllama(t *testing.T) {
	need(t)
	fake := ollamatest.New(ollamatest.Config{})
	if err := fake.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(fake.Close)
	blob := fileSHA256(t, filepath.Join(tools.src, "tiny.gguf"))
	for _, c := range apiCases {
		t.Run(c.name, func(t *testing.T) {
			if why, ok := fakeSkips[c.name]; ok {
				t.Skip(why)
			}
			p := strings.ReplaceAll(c.path, "{tinyblob}", blob)
			direct := send(t, c.method, srvA.url+p, strings.ReplaceAll(c.body, "{side}", "sfake1"))
			faked := send(t, c.method, fake.URL()+p, strings.ReplaceAll(c.body, "{side}", "sfake2"))
			direct.body = []byte(strings.ReplaceAll(string(direct.body), "sfake1", "{side}"))
			faked.body = []byte(strings.ReplaceAll(string(faked.body), "sfake2", "{side}"))
			d := &differ{route: c.method + " " + c.path, allow: fakeDifferences, shapesOnly: true}
			for _, diff := range d.replies(direct, faked) {
				t.Errorf("%s %s %s: %s", c.method, c.path, c.body, strings.ReplaceAll(diff, "through Drover", "from the fake"))
			}
		})
	}
}
