package catalog

import "testing"

func TestSameAgreesWithNormalize(t *testing.T) {
	names := []string{"", "tiny", "tiny:latest", " tiny ", "tiny:v2", "host:5000/m", "host:5000/m:latest", "ns/tiny", "ns/tiny:latest", "tiny:latest:latest"}
	for _, a := range names {
		for _, b := range names {
			if got, want := Same(a, b), Normalize(a) == Normalize(b); got != want {
				t.Errorf("Same(%q, %q) = %v, Normalize says %v", a, b, got, want)
			}
		}
	}
}

func TestGetFindsUntaggedWithoutNormalising(t *testing.T) {
	l := NewList([]Model{{Name: "tiny:latest"}, {Name: "host:5000/m"}, {Name: "big:7b"}})
	for _, n := range []string{"tiny", "tiny:latest", " tiny", "host:5000/m", "host:5000/m:latest", "big:7b"} {
		if !l.Has(n) {
			t.Errorf("%q not found", n)
		}
	}
	for _, n := range []string{"big", "tiny:7b", "host:5000/x"} {
		if l.Has(n) {
			t.Errorf("%q found", n)
		}
	}
	if allocs := testing.AllocsPerRun(100, func() { l.Has("tiny") }); allocs != 0 {
		t.Errorf("Has(untagged) allocates %v times", allocs)
	}
}
