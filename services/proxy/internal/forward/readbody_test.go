package forward

import (
	"io"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"testing"
)

// limited is a body that says its bound, as the server's body limits do.
type limited struct {
	io.ReadCloser
	n int64
}

func (l limited) Limit() int64 { return l.n }

// A body costs about its size: one buffer of its length when the length is
// known; up to one and a half times the limit while a chunked one is read
// (16 then 32 MiB for a 32 MiB limit), not the geometric series of a
// growing slice.
func TestReadBodyBuffers(t *testing.T) {
	const limit = 32 << 20
	body := strings.Repeat("a", limit)
	fail := func(w http.ResponseWriter, status int, msg string) { t.Errorf("%d %s", status, msg) }

	r := httptest.NewRequest(http.MethodPost, "/api/chat", strings.NewReader(body))
	got, ok := ReadBody(httptest.NewRecorder(), r, fail)
	if !ok || len(got) != limit || cap(got) != limit+1 {
		t.Fatalf("known length: %d bytes in a buffer of %d", len(got), cap(got))
	}

	for _, size := range []int{limit, limit + 4096} {
		r = httptest.NewRequest(http.MethodPost, "/api/chat", nil)
		src := io.NopCloser(strings.NewReader(body[:min(size, limit)] + strings.Repeat("b", size-min(size, limit))))
		r.Body, r.ContentLength = limited{http.MaxBytesReader(nil, src, limit), limit}, -1
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		rec := httptest.NewRecorder()
		got, ok = ReadBody(rec, r, func(w http.ResponseWriter, status int, msg string) { w.WriteHeader(status) })
		runtime.ReadMemStats(&after)
		if size == limit && (!ok || len(got) != limit) || size > limit && (ok || rec.Code != http.StatusRequestEntityTooLarge) {
			t.Fatalf("chunked %d bytes: ok %v, %d bytes, status %d", size, ok, len(got), rec.Code)
		}
		// 512 bytes doubling to 16 MiB, then limit+1: twice the limit in all,
		// one and a half at once.
		if n := after.TotalAlloc - before.TotalAlloc; n > 2*limit+1<<20 {
			t.Errorf("chunked %d bytes: %d bytes allocated reading it", size, n)
		}
	}
}
