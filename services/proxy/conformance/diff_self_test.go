package conformance

import (
	"net/http"
	"strings"
	"testing"
)

// TestCompareReplies shows the comparison can fail, and where it may not:
// it needs no Ollama and runs in every `make test`.
func TestCompareReplies(t *testing.T) {
	const js, nd = "application/json; charset=utf-8", "application/x-ndjson"
	final := `{"model":"tiny","created_at":"T1","message":{"role":"assistant","content":""},"done":true,"done_reason":"stop","total_duration":5,"prompt_eval_count":31,"eval_count":3}`
	chunk := `{"model":"tiny","created_at":"T1","message":{"role":"assistant","content":"a"},"done":false}`
	cases := []struct {
		name, route     string
		seeded          bool
		ctD, ctV        string
		direct, through string
		differs         bool
	}{
		{"same", "POST /api/show", false, js, js, `{"a":1,"b":"x"}`, `{"a":1,"b":"x"}`, false},
		{"content type", "POST /api/show", false, js, "application/json", `{}`, `{}`, true},
		{"extra field", "POST /api/show", false, js, js, `{"a":1}`, `{"a":1,"endpoints":["a"]}`, true},
		{"missing field", "POST /api/show", false, js, js, `{"a":1,"b":2}`, `{"a":1}`, true},
		{"type", "POST /api/show", false, js, js, `{"a":1}`, `{"a":"1"}`, true},
		{"value", "POST /api/chat", false, js, js, `{"error":"model 'x' not found"}`, `{"error":"model \"x\" not found"}`, true},
		{"timings may differ", "POST /api/chat", false, js, js, `{"total_duration":1,"created_at":"a"}`, `{"total_duration":9,"created_at":"b"}`, false},
		{"timing type may not", "POST /api/chat", false, js, js, `{"total_duration":1}`, `{"total_duration":"1"}`, true},
		{"text may differ unseeded", "POST /api/generate", false, js, js, `{"response":"ab","eval_count":2}`, `{"response":"c","eval_count":1}`, false},
		{"text must match seeded", "POST /api/generate", true, js, js, `{"response":"ab"}`, `{"response":"c"}`, true},
		{"endpoints allowed on tags", "GET /api/tags", false, js, js,
			`{"models":[{"name":"tiny:latest","size":1}]}`, `{"models":[{"name":"tiny:latest","size":1,"endpoints":["a","b"]},{"name":"other:latest","size":2,"endpoints":["b"]}]}`, false},
		{"merged list keeps entries", "GET /api/tags", false, js, js,
			`{"models":[{"name":"tiny:latest","size":1}]}`, `{"models":[{"name":"other:latest","size":1}]}`, true},
		{"merged entry values", "GET /api/ps", false, js, js,
			`{"models":[{"name":"tiny:latest","size":1}]}`, `{"models":[{"name":"tiny:latest","size":2}]}`, true},
		{"stream lengths may differ", "POST /api/chat", false, nd, nd, chunk + "\n" + chunk + "\n" + final + "\n", chunk + "\n" + final + "\n", false},
		{"stream shape", "POST /api/chat", false, nd, nd, chunk + "\n" + final + "\n", chunk + "\n" + `{"done":true}` + "\n", true},
		{"no content chunks", "POST /api/chat", false, nd, nd, chunk + "\n" + final + "\n", final + "\n", true},
		{"stopped at once", "POST /api/chat", false, nd, nd, chunk + "\n" + final + "\n", strings.Replace(final, `"eval_count":3`, `"eval_count":1`, 1) + "\n", false},
		{"stream final", "POST /api/chat", false, nd, nd, chunk + "\n" + final + "\n", chunk + "\n" + `{"model":"tiny","created_at":"T1","message":{"role":"assistant","content":""},"done":true,"done_reason":"stop","total_duration":5,"prompt_eval_count":30,"eval_count":3}` + "\n", true},
		{"text body", "GET /", false, "text/plain", "text/plain", "404 page not found", "404 page not found\n", true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			d := reply{status: 200, header: http.Header{"Content-Type": {c.ctD}}, body: []byte(c.direct)}
			v := reply{status: 200, header: http.Header{"Content-Type": {c.ctV}}, body: []byte(c.through)}
			diffs := compareReplies(c.route, c.seeded, d, v)
			if (len(diffs) > 0) != c.differs {
				t.Fatalf("differences %q, want differs=%v", diffs, c.differs)
			}
		})
	}
}
