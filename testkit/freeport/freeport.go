// Package freeport gives tests loopback TCP ports for the servers they
// start (nats-server, clickhouse-server, ollama, drover-proxy), chosen
// below the kernel's ephemeral range (net.ipv4.ip_local_port_range).
//
// A port the kernel handed to a listener on :0, once that listener is
// closed, can be handed out again at once as the source port of an
// outgoing connection, and the server meant to listen on it then fails
// with "address already in use". CI met it on 2026-12-07: a NATS node's
// route port went to another node's route dial a few milliseconds before
// the node bound it (TestNATSClusterNodeLossUnderLoad). The kernel never
// picks a source port outside the ephemeral range, so ports chosen there
// can only be taken by another test choosing the same one: each process
// walks the range from a random start, so two rarely meet.
package freeport

import (
	"errors"
	"math/rand/v2"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
)

// mu guards the walk: the range, read once, and the next port to try.
var (
	mu     sync.Mutex
	known  bool // lo and hi are read
	lo, hi int  // ports are chosen in [lo, hi); none: the kernel chooses
	next   int
)

// minSpan is the fewest ports worth walking outside the ephemeral range.
const minSpan = 2000

// span is where ports are chosen: below the ephemeral range from 10000
// (clear of the well-known and registered services tests may meet), or
// above it; (0, 0) when neither has room.
func span(ephemeral string) (int, int) {
	first, last := 32768, 60999 // Linux's default
	if f := strings.Fields(ephemeral); len(f) == 2 {
		a, err1 := strconv.Atoi(f[0])
		z, err2 := strconv.Atoi(f[1])
		if err1 == nil && err2 == nil && a <= z {
			first, last = a, z
		}
	}
	switch {
	case first-10000 >= minSpan:
		return 10000, first
	case 65536-(last+1) >= minSpan:
		return last + 1, 65536
	}
	return 0, 0
}

// Port is a port on 127.0.0.1 that nothing listened on a moment ago and
// that the kernel will not use as an outgoing connection's source port.
func Port() (int, error) {
	mu.Lock()
	defer mu.Unlock()
	if !known {
		b, _ := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
		lo, hi = span(string(b))
		known = true
		if hi > lo {
			next = lo + rand.IntN(hi-lo)
		}
	}
	if hi <= lo {
		return kernel()
	}
	for range hi - lo {
		p := next
		if next++; next >= hi {
			next = lo
		}
		l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(p)))
		if err != nil {
			continue // taken: the next
		}
		l.Close()
		return p, nil
	}
	return 0, errors.New("freeport: every port outside the ephemeral range is taken")
}

// Addr is Port as a host:port address on 127.0.0.1.
func Addr() (string, error) {
	p, err := Port()
	if err != nil {
		return "", err
	}
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(p)), nil
}

// kernel is the kernel's choice, for machines whose ephemeral range
// leaves no room outside it.
func kernel() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}
