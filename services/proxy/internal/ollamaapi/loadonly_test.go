package ollamaapi

import (
	"runtime"
	"strings"
	"testing"
)

// Deciding whether a request only loads a model does not copy its
// messages or prompt: a 32 MiB chat once cost 64 MiB, the body and a copy
// of its messages made here.
func TestLoadOnlyDoesNotCopyTheBody(t *testing.T) {
	big := strings.Repeat("a", 8<<20)
	for _, tt := range []struct{ route, body string }{
		{"/api/chat", `{"model":"m","messages":[{"role":"user","content":"` + big + `"}]}`},
		{"/api/generate", `{"model":"m","prompt":"` + big + `"}`},
		{"/api/embed", `{"model":"m","input":["` + big + `"]}`},
	} {
		body := []byte(tt.body)
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		loadOnly(tt.route, body)
		runtime.ReadMemStats(&after)
		if n := after.TotalAlloc - before.TotalAlloc; n > 1<<20 {
			t.Errorf("%s: %d bytes allocated for an %d-byte body", tt.route, n, len(body))
		}
	}
}
