package ollamatest

import (
	"crypto/sha256"
	"encoding/hex"
	"strings"
	"testing"
)

func TestEmbed(t *testing.T) {
	e := start(t, Config{})
	cases := []struct {
		path, body string
		status     int
		vectors    int
		prompt     float64
		err        string
	}{
		{"/api/embed", `{"model":"tiny-embed","input":["a b","c"]}`, 200, 2, 2 + 4 + 1 + 4, ""},
		{"/api/embed", `{"model":"tiny-embed","input":"one"}`, 200, 1, 5, ""},
		{"/api/embed", `{"model":"tiny-embed"}`, 200, 0, 0, ""},
		{"/api/embed", `{"model":"tiny-embed","input":[1]}`, 400, 0, 0, "invalid input type"},
		{"/api/embed", `{"model":"nope","input":"x"}`, 404, 0, 0, `model "nope" not found, try pulling it first`},
		{"/api/embeddings", `{"prompt":"x"}`, 400, 0, 0, "model is required"},
		{"/api/embeddings", `{"model":"nope","prompt":"x"}`, 404, 0, 0, `model "nope" not found, try pulling it first`},
	}
	for _, c := range cases {
		r := e.post(c.path, c.body)
		m := obj(t, r.body)
		if r.status != c.status || (c.err != "" && m["error"] != c.err) {
			t.Errorf("%s %s = %d %s", c.path, c.body, r.status, r.body)
			continue
		}
		if c.status == 200 {
			if vs, _ := m["embeddings"].([]any); len(vs) != c.vectors || (c.prompt > 0 && m["prompt_eval_count"] != c.prompt) {
				t.Errorf("%s = %s", c.body, r.body)
			}
		}
	}
	m := obj(t, e.post("/api/embeddings", `{"model":"tiny-embed","prompt":"hi"}`).body)
	if v, _ := m["embedding"].([]any); len(v) != 64 {
		t.Errorf("embeddings: %v", m)
	}
	if got := e.s.Counters().EmbedPromptEvalCount; got != 11+5 {
		t.Errorf("EmbedPromptEvalCount = %d", got)
	}
}

func TestManagement(t *testing.T) {
	e := start(t, Config{})
	ls := lines(t, e.post("/api/pull", `{"model":"fresh"}`).body)
	if ls[0]["status"] != "pulling manifest" || ls[len(ls)-1]["status"] != "success" || ls[1]["digest"] == nil || ls[1]["total"] == nil {
		t.Fatalf("pull stream %v", ls)
	}
	if r := e.post("/api/pull", `{"model":"fresh2","stream":false}`); string(r.body) != `{"status":"success"}` || r.ctype != "application/json" {
		t.Fatalf("pull stream:false = %q %s", r.ctype, r.body)
	}
	cases := []struct {
		method, path, body string
		status             int
		body2              string
	}{
		{"POST", "/api/show", `{"model":"fresh2"}`, 200, ""},
		{"POST", "/api/copy", `{"source":"fresh","destination":"copy"}`, 200, "<empty>"},
		{"POST", "/api/copy", `{"source":"nope","destination":"x"}`, 404, `{"error":"model \"nope\" not found"}`},
		{"DELETE", "/api/delete", `{"model":"copy"}`, 200, "<empty>"},
		{"DELETE", "/api/delete", `{"model":"copy"}`, 404, `{"error":"model 'copy' not found"}`},
		{"DELETE", "/api/delete", `{}`, 400, `{"error":"name \"\" is invalid"}`},
		{"POST", "/api/create", `{"model":"made","from":"tiny-embed","stream":false}`, 200, `{"status":"success"}`},
		{"POST", "/api/show", `{}`, 400, `{"error":"model is required"}`},
		{"HEAD", "/api/blobs/sha256:" + hex.EncodeToString(make([]byte, 32)), "", 404, ""},
		{"POST", "/api/blobs/bad", "", 400, `{"error":"invalid digest format"}`},
	}
	for _, c := range cases {
		r := e.do(c.method, c.path, c.body)
		if r.status != c.status || c.body2 != "" && string(r.body) != strings.TrimPrefix(c.body2, "<empty>") {
			t.Errorf("%s %s %s = %d %s", c.method, c.path, c.body, r.status, r.body)
		}
	}
	if r := e.post("/api/embed", `{"model":"made","input":"x"}`); r.status != 200 {
		t.Errorf("created model: %d", r.status)
	}
	if r := e.post("/api/chat", `{"model":"made","messages":[{"role":"user","content":"x"}]}`); r.status != 400 {
		t.Errorf("created from embedding model must keep its capabilities: %d", r.status)
	}
	sum := sha256.Sum256([]byte("blob"))
	digest := "sha256:" + hex.EncodeToString(sum[:])
	if r := e.post("/api/blobs/"+digest, "blob"); r.status != 201 {
		t.Errorf("blob upload: %d %s", r.status, r.body)
	}
	if r := e.do("HEAD", "/api/blobs/"+digest, ""); r.status != 200 {
		t.Errorf("blob head: %d", r.status)
	}
}
