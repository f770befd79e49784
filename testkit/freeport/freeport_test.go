package freeport

import (
	"net"
	"strconv"
	"testing"
)

func TestSpanAvoidsTheEphemeralRange(t *testing.T) {
	for _, c := range []struct {
		in     string
		lo, hi int
	}{
		{"32768\t60999\n", 10000, 32768},
		{"", 10000, 32768},
		{"garbage", 10000, 32768},
		{"1024 60000", 60001, 65536},
		{"1024 65000", 0, 0},
	} {
		if lo, hi := span(c.in); lo != c.lo || hi != c.hi {
			t.Errorf("span(%q) = [%d, %d), want [%d, %d)", c.in, lo, hi, c.lo, c.hi)
		}
	}
}

func TestPortsAreFreeDistinctAndOutsideTheRange(t *testing.T) {
	seen := map[int]bool{}
	for range 50 {
		p, err := Port()
		if err != nil {
			t.Fatal(err)
		}
		if seen[p] {
			t.Fatalf("port %d handed out twice", p)
		}
		seen[p] = true
		if hi > lo && (p < lo || p >= hi) {
			t.Fatalf("port %d outside [%d, %d)", p, lo, hi)
		}
		l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(p)))
		if err != nil {
			t.Fatalf("port %d not free: %v", p, err)
		}
		l.Close()
	}
}

func TestAddrIsALoopbackPortFromTheRange(t *testing.T) {
	addr, err := Addr()
	if err != nil {
		t.Fatal(err)
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil || host != "127.0.0.1" {
		t.Fatalf("Addr() = %q (%v), want 127.0.0.1:port", addr, err)
	}
	if p, _ := strconv.Atoi(port); hi > lo && (p < lo || p >= hi) {
		t.Fatalf("port %d outside [%d, %d)", p, lo, hi)
	}
}
