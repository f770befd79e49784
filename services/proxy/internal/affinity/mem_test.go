package affinity

import (
	"runtime"
	"testing"
	"time"
)

// TestIndexMemory measures the index's heap at its default bound
// (docs/routing.md quotes the figure); it fails if the bound stops
// bounding memory (over 128 bytes an entry).
func TestIndexMemory(t *testing.T) {
	const entries = 65536
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	x := NewIndex(entries, time.Hour)
	now := time.Now()
	for i := range uint64(entries + entries/4) {
		x.InsertHashes(Target{"gpu-a:11434", "llama3.2:latest"}, []uint64{i}, now)
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	per := float64(after.HeapAlloc-before.HeapAlloc) / entries
	t.Logf("%d entries: %.0f bytes each on the heap", x.Len(), per)
	if x.Len() != entries || per > 128 {
		t.Fatalf("%d entries, %.0f bytes each", x.Len(), per)
	}
	runtime.KeepAlive(x)
}
