package spool

import (
	"testing"
)

// BenchmarkAppend measures one append of a usage event's size (380 bytes)
// from parallel goroutines: into the mapped segment, and with write(2)
// (where segments are not mapped).
func BenchmarkAppend(b *testing.B) {
	for _, tc := range []struct {
		name  string
		noMap bool
	}{{"mapped", false}, {"write", true}} {
		b.Run(tc.name, func(b *testing.B) {
			s, err := Open(b.TempDir(), Options{MaxBytes: 8 << 30, SegmentBytes: 64 << 20, noMap: tc.noMap})
			if err != nil {
				b.Fatal(err)
			}
			rec := make([]byte, 380)
			for i := range rec {
				rec[i] = 'x'
			}
			b.SetBytes(int64(len(rec)))
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if _, err := s.Append(rec); err != nil {
						b.Error(err)
						return
					}
				}
			})
			b.StopTimer()
			s.Close()
		})
	}
}
