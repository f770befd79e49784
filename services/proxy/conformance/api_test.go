package conformance

import (
	"crypto/sha256"
	"encoding/hex"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// apiCase is one request a client can make. "{side}" in the body is
// replaced by sideDirect or sideDrover, so that the two runs of a copy,
// create or delete touch different models; answers are compared with it
// put back.
type apiCase struct {
	name   string
	method string
	path   string
	body   string
	// seeded requests fix a seed: the generated text must match too.
	seeded bool
}

const sideDirect, sideDrover = "sdirect", "sproxied"

const hi = `"messages":[{"role":"user","content":"hello there"}]`

// apiCases run in order, each once directly against server A (which has
// every model) and once through Drover over A and B.
var apiCases = []apiCase{
	// Liveness, version, unknown routes and methods.
	{name: "root", method: "GET", path: "/"},
	{name: "root head", method: "HEAD", path: "/"},
	{name: "version", method: "GET", path: "/api/version"},
	{name: "version head", method: "HEAD", path: "/api/version"},
	{name: "unknown path", method: "GET", path: "/api/nope"},
	{name: "chat by GET", method: "GET", path: "/api/chat"},
	{name: "tags by POST", method: "POST", path: "/api/tags", body: `{}`},

	// Listings.
	{name: "tags", method: "GET", path: "/api/tags"},
	{name: "ps empty or not", method: "GET", path: "/api/ps"},

	// Show.
	{name: "show", method: "POST", path: "/api/show", body: `{"model":"tiny"}`},
	{name: "show verbose", method: "POST", path: "/api/show", body: `{"model":"tiny2","verbose":true}`},
	{name: "show by name", method: "POST", path: "/api/show", body: `{"name":"tiny-fixed:latest"}`},
	{name: "show embed model", method: "POST", path: "/api/show", body: `{"model":"tiny-embed"}`},
	{name: "show alias", method: "POST", path: "/api/show", body: `{"model":"tiny-alias"}`},
	{name: "show unknown", method: "POST", path: "/api/show", body: `{"model":"nope"}`},
	{name: "show missing model", method: "POST", path: "/api/show", body: `{}`},
	{name: "show empty body", method: "POST", path: "/api/show"},
	{name: "show malformed", method: "POST", path: "/api/show", body: `{"model":`},
	{name: "show model not a string", method: "POST", path: "/api/show", body: `{"model":5}`},

	// Chat.
	{name: "chat stream", method: "POST", path: "/api/chat", body: `{"model":"tiny",` + hi + `}`},
	{name: "chat no stream", method: "POST", path: "/api/chat", body: `{"model":"tiny",` + hi + `,"stream":false}`},
	{name: "chat seeded stream", method: "POST", path: "/api/chat", seeded: true, body: `{"model":"tiny",` + hi + `,"options":{"seed":7,"num_predict":12}}`},
	{name: "chat seeded no stream", method: "POST", path: "/api/chat", seeded: true, body: `{"model":"tiny",` + hi + `,"stream":false,"options":{"seed":7,"num_predict":12}}`},
	{name: "chat fixed length", method: "POST", path: "/api/chat", body: `{"model":"tiny-fixed",` + hi + `,"stream":false}`},
	{name: "chat options", method: "POST", path: "/api/chat", body: `{"model":"tiny-fixed",` + hi + `,"options":{"temperature":0.2,"top_k":5,"num_predict":9,"stop":["zzz"]}}`},
	{name: "chat format json", method: "POST", path: "/api/chat", body: `{"model":"tiny",` + hi + `,"format":"json","stream":false,"options":{"num_predict":8}}`},
	{name: "chat format schema", method: "POST", path: "/api/chat", body: `{"model":"tiny",` + hi + `,"format":{"type":"object","properties":{"a":{"type":"string"}}},"options":{"num_predict":8}}`},
	{name: "chat system and history", method: "POST", path: "/api/chat", body: `{"model":"tiny","messages":[{"role":"system","content":"be brief"},{"role":"user","content":"a"},{"role":"assistant","content":"b"},{"role":"user","content":"c"}],"stream":false}`},
	{name: "chat keep_alive 10s", method: "POST", path: "/api/chat", body: `{"model":"tiny",` + hi + `,"keep_alive":"10s","stream":false}`},
	{name: "chat keep_alive -1", method: "POST", path: "/api/chat", body: `{"model":"tiny",` + hi + `,"keep_alive":-1,"stream":false}`},
	{name: "chat load", method: "POST", path: "/api/chat", body: `{"model":"tiny","messages":[]}`},
	{name: "ps with loaded models", method: "GET", path: "/api/ps"},
	{name: "chat unload", method: "POST", path: "/api/chat", body: `{"model":"tiny","messages":[],"keep_alive":0}`},
	{name: "chat keep_alive 0 with messages", method: "POST", path: "/api/chat", body: `{"model":"tiny-fixed",` + hi + `,"keep_alive":0,"stream":false}`},
	{name: "chat alias", method: "POST", path: "/api/chat", body: `{"model":"tiny-alias",` + hi + `,"stream":false}`},
	{name: "chat tools on tools model", method: "POST", path: "/api/chat", body: `{"model":"tiny2",` + hi + `,"stream":false,"tools":[{"type":"function","function":{"name":"f","description":"d","parameters":{"type":"object","properties":{}}}}]}`},
	{name: "chat tools refused", method: "POST", path: "/api/chat", body: `{"model":"tiny",` + hi + `,"tools":[{"type":"function","function":{"name":"f","description":"d","parameters":{"type":"object","properties":{}}}}]}`},
	{name: "chat think refused", method: "POST", path: "/api/chat", body: `{"model":"tiny",` + hi + `,"think":true}`},
	{name: "chat on embedding model", method: "POST", path: "/api/chat", body: `{"model":"tiny-embed",` + hi + `}`},
	{name: "chat unknown model", method: "POST", path: "/api/chat", body: `{"model":"nope",` + hi + `}`},
	{name: "chat missing model", method: "POST", path: "/api/chat", body: `{` + hi + `}`},
	{name: "chat empty body", method: "POST", path: "/api/chat"},
	{name: "chat malformed", method: "POST", path: "/api/chat", body: `{"model":"tiny",`},
	{name: "chat messages not a list", method: "POST", path: "/api/chat", body: `{"model":"tiny","messages":"hi"}`},
	{name: "chat stream not a bool", method: "POST", path: "/api/chat", body: `{"model":"tiny",` + hi + `,"stream":"yes"}`},
	{name: "chat bad role", method: "POST", path: "/api/chat", body: `{"model":"tiny","messages":[{"role":5}]}`},

	// Generate.
	{name: "generate stream", method: "POST", path: "/api/generate", body: `{"model":"tiny","prompt":"hello"}`},
	{name: "generate no stream", method: "POST", path: "/api/generate", body: `{"model":"tiny","prompt":"hello","stream":false}`},
	{name: "generate seeded", method: "POST", path: "/api/generate", seeded: true, body: `{"model":"tiny","prompt":"hello","options":{"seed":3,"num_predict":10}}`},
	{name: "generate seeded no stream", method: "POST", path: "/api/generate", seeded: true, body: `{"model":"tiny2","prompt":"hello","stream":false,"options":{"seed":3,"num_predict":10}}`},
	{name: "generate fixed", method: "POST", path: "/api/generate", body: `{"model":"tiny-fixed","prompt":"hello","options":{"num_predict":5}}`},
	{name: "generate system raw", method: "POST", path: "/api/generate", body: `{"model":"tiny","prompt":"hello","system":"be brief","stream":false}`},
	{name: "generate raw", method: "POST", path: "/api/generate", body: `{"model":"tiny","prompt":"<|user|>hi","raw":true,"stream":false,"options":{"num_predict":4}}`},
	{name: "generate format json", method: "POST", path: "/api/generate", body: `{"model":"tiny","prompt":"hello","format":"json","options":{"num_predict":6}}`},
	{name: "generate load", method: "POST", path: "/api/generate", body: `{"model":"tiny2"}`},
	{name: "generate unload", method: "POST", path: "/api/generate", body: `{"model":"tiny2","keep_alive":0}`},
	{name: "generate unload no stream", method: "POST", path: "/api/generate", body: `{"model":"tiny","keep_alive":0,"stream":false}`},
	{name: "generate suffix refused", method: "POST", path: "/api/generate", body: `{"model":"tiny","prompt":"a","suffix":"b"}`},
	{name: "generate think refused", method: "POST", path: "/api/generate", body: `{"model":"tiny","prompt":"a","think":true}`},
	{name: "generate on embedding model", method: "POST", path: "/api/generate", body: `{"model":"tiny-embed","prompt":"hello"}`},
	{name: "generate unknown model", method: "POST", path: "/api/generate", body: `{"model":"nope","prompt":"hello"}`},
	{name: "generate missing model", method: "POST", path: "/api/generate", body: `{"prompt":"hello"}`},
	{name: "generate empty body", method: "POST", path: "/api/generate"},
	{name: "generate malformed", method: "POST", path: "/api/generate", body: `{"model":"tiny","prompt":`},
	{name: "generate prompt not a string", method: "POST", path: "/api/generate", body: `{"model":"tiny","prompt":1}`},
	{name: "generate options not an object", method: "POST", path: "/api/generate", body: `{"model":"tiny","prompt":"a","options":[1]}`},

	// Embeddings.
	{name: "embed", method: "POST", path: "/api/embed", body: `{"model":"tiny-embed","input":"hello"}`},
	{name: "embed list", method: "POST", path: "/api/embed", body: `{"model":"tiny-embed","input":["hello","there friend"]}`},
	{name: "embed truncate dimensions", method: "POST", path: "/api/embed", body: `{"model":"tiny-embed","input":"hello","truncate":true,"dimensions":8}`},
	{name: "embed chat model", method: "POST", path: "/api/embed", body: `{"model":"tiny","input":"hello"}`},
	{name: "embed empty input", method: "POST", path: "/api/embed", body: `{"model":"tiny-embed"}`},
	{name: "embed keep_alive 0", method: "POST", path: "/api/embed", body: `{"model":"tiny-embed","input":"x","keep_alive":0}`},
	{name: "embed unknown model", method: "POST", path: "/api/embed", body: `{"model":"nope","input":"hello"}`},
	{name: "embed missing model", method: "POST", path: "/api/embed", body: `{"input":"hello"}`},
	{name: "embed malformed", method: "POST", path: "/api/embed", body: `{"model"`},
	{name: "embed input not text", method: "POST", path: "/api/embed", body: `{"model":"tiny-embed","input":5}`},
	{name: "embeddings", method: "POST", path: "/api/embeddings", body: `{"model":"tiny-embed","prompt":"hello"}`},
	{name: "embeddings empty prompt", method: "POST", path: "/api/embeddings", body: `{"model":"tiny-embed"}`},
	{name: "embeddings unknown model", method: "POST", path: "/api/embeddings", body: `{"model":"nope","prompt":"hello"}`},
	{name: "embeddings missing model", method: "POST", path: "/api/embeddings", body: `{"prompt":"hello"}`},
	{name: "embeddings malformed", method: "POST", path: "/api/embeddings", body: `[`},

	// Copy, create, delete: each side works on its own names.
	{name: "copy", method: "POST", path: "/api/copy", body: `{"source":"tiny","destination":"cp-{side}"}`},
	{name: "show copy", method: "POST", path: "/api/show", body: `{"model":"cp-{side}"}`},
	{name: "chat copy", method: "POST", path: "/api/chat", body: `{"model":"cp-{side}",` + hi + `,"stream":false,"options":{"num_predict":3}}`},
	{name: "copy unknown source", method: "POST", path: "/api/copy", body: `{"source":"nope","destination":"x-{side}"}`},
	{name: "copy missing destination", method: "POST", path: "/api/copy", body: `{"source":"tiny"}`},
	{name: "copy missing source", method: "POST", path: "/api/copy", body: `{"destination":"x-{side}"}`},
	{name: "copy malformed", method: "POST", path: "/api/copy", body: `{"source":`},
	{name: "copy bad destination", method: "POST", path: "/api/copy", body: `{"source":"tiny","destination":"bad name!"}`},
	{name: "delete", method: "DELETE", path: "/api/delete", body: `{"model":"cp-{side}"}`},
	{name: "delete again", method: "DELETE", path: "/api/delete", body: `{"model":"cp-{side}"}`},
	{name: "delete unknown", method: "DELETE", path: "/api/delete", body: `{"model":"nope"}`},
	{name: "delete by name", method: "DELETE", path: "/api/delete", body: `{"name":"nope2"}`},
	{name: "delete missing model", method: "DELETE", path: "/api/delete", body: `{}`},
	{name: "delete malformed", method: "DELETE", path: "/api/delete", body: `{"model`},
	{name: "delete by POST", method: "POST", path: "/api/delete", body: `{"model":"nope"}`},
	{name: "create from model", method: "POST", path: "/api/create", body: `{"model":"made-{side}","from":"tiny","system":"be brief"}`},
	{name: "create no stream", method: "POST", path: "/api/create", body: `{"model":"made2-{side}","from":"tiny-fixed","parameters":{"num_predict":4},"stream":false}`},
	{name: "chat created model", method: "POST", path: "/api/chat", body: `{"model":"made2-{side}",` + hi + `,"stream":false}`},
	{name: "create from unknown", method: "POST", path: "/api/create", body: `{"model":"bad-{side}","from":"nope"}`},
	{name: "create missing model", method: "POST", path: "/api/create", body: `{"from":"tiny"}`},
	{name: "create malformed", method: "POST", path: "/api/create", body: `{"model":"x",`},
	{name: "delete created", method: "DELETE", path: "/api/delete", body: `{"model":"made-{side}"}`},
	{name: "delete created 2", method: "DELETE", path: "/api/delete", body: `{"model":"made2-{side}"}`},
	{name: "tags after changes", method: "GET", path: "/api/tags"},

	// Blobs.
	{name: "blob head present", method: "HEAD", path: "/api/blobs/sha256:{tinyblob}"},
	{name: "blob head absent", method: "HEAD", path: "/api/blobs/sha256:0000000000000000000000000000000000000000000000000000000000000000"},
}

func TestAPIConformance(t *testing.T) {
	need(t)
	d := newDrover(t, nil)
	blob := fileSHA256(t, filepath.Join(tools.src, "tiny.gguf"))
	for _, c := range apiCases {
		t.Run(c.name, func(t *testing.T) {
			p := strings.ReplaceAll(c.path, "{tinyblob}", blob)
			direct := send(t, c.method, srvA.url+p, strings.ReplaceAll(c.body, "{side}", sideDirect))
			via := send(t, c.method, d.url+p, strings.ReplaceAll(c.body, "{side}", sideDrover))
			direct.body = []byte(strings.ReplaceAll(string(direct.body), sideDirect, "{side}"))
			via.body = []byte(strings.ReplaceAll(string(via.body), sideDrover, "{side}"))
			for _, diff := range compareReplies(c.method+" "+c.path, c.seeded, direct, via) {
				t.Errorf("%s %s %s: %s", c.method, c.path, c.body, diff)
			}
			if testing.Verbose() {
				t.Logf("%d %s %s", direct.status, direct.header.Get("Content-Type"), short(string(direct.body)))
			}
		})
	}
}

func fileSHA256(t *testing.T, p string) string {
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil))
}
