package affinity

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/droverhq/drover/testkit/natstest"
)

// BenchmarkShareWorkload measures what sharing the index costs on the
// wire for the workload of make bench-routing: 64 groups of conversations,
// each with its own system prompt of about 2,000 tokens, picked by Zipf
// popularity; a fifth of the requests continue a conversation (up to six
// turns), the rest ask one new question. Each request goes where its
// longest prefix is (else to the next of four backends in turn), is
// inserted into the index and shared through a real NATS server, as the
// router does. Reported: bytes and hashes on the wire per request, and
// messages a second at the rate the loop runs (the interval bounds them
// to 20 a second whatever the rate).
func BenchmarkShareWorkload(b *testing.B) {
	ns := natstest.Start(b)
	sender, receiver := newCounts(), newCounts()
	x := NewIndex(65536, time.Hour)
	s, err := NewSharer(SharerOptions{Conn: connect(b, ns.URL()), Replica: "r1", Index: x, Interval: 50 * time.Millisecond, Observe: sender.observe})
	if err != nil {
		b.Fatal(err)
	}
	r2, err := NewSharer(SharerOptions{Conn: connect(b, ns.URL()), Replica: "r2", Index: NewIndex(65536, time.Hour), Observe: receiver.observe})
	if err != nil {
		b.Fatal(err)
	}
	defer r2.Close()

	ps := Parser{BlockBytes: 256, Chain: true, DefaultOutput: 512}
	rng := rand.New(rand.NewPCG(1, 2))
	zipf := rand.NewZipf(rand.New(rand.NewPCG(3, 4)), 1.1, 1, 63)
	systems := make([]string, 64)
	for i := range systems {
		systems[i] = strings.Repeat(fmt.Sprintf("Group %d's instructions, rule by rule. ", i), 200)
	}
	type conv struct {
		group int
		msgs  []map[string]string
	}
	var open []*conv
	targets := []Target{{"a", "m"}, {"b", "m"}, {"c", "m"}, {"d", "m"}}
	turn, hashes := 0, 0
	start := time.Now()
	for i := 0; b.Loop(); i++ {
		var c *conv
		if len(open) > 0 && rng.IntN(5) == 0 {
			k := rng.IntN(len(open))
			c = open[k]
			c.msgs = append(c.msgs, map[string]string{"role": "assistant", "content": "an answer of a few dozen words " + fmt.Sprint(i)},
				map[string]string{"role": "user", "content": "and a follow-up question " + fmt.Sprint(i)})
			if len(c.msgs) >= 13 {
				open = append(open[:k], open[k+1:]...)
			}
		} else {
			g := int(zipf.Uint64())
			c = &conv{group: g, msgs: []map[string]string{{"role": "system", "content": systems[g]}, {"role": "user", "content": "a new question " + fmt.Sprint(i)}}}
			if len(open) < 200 {
				open = append(open, c)
			}
		}
		body, _ := json.Marshal(map[string]any{"model": "m", "messages": c.msgs})
		p := ps.Parse("/api/chat", body, nil)
		best, bestM := targets[turn%len(targets)], 0
		for _, t := range targets {
			if m := x.Lookup(t, &p, time.Now()).Blocks; m > bestM {
				best, bestM = t, m
			}
		}
		if bestM == 0 {
			turn++
		}
		fresh := x.Insert(best, &p, time.Now(), 250*time.Millisecond, nil) // the server's refresh at the default interval
		hashes += len(fresh)
		if len(fresh) > 0 {
			s.Inserted(best, fresh)
		}
	}
	elapsed := time.Since(start)
	s.Close()
	sent, bytes := sender.get("sent")
	waitFor(b, "the receiver to have every message", func() bool { n, _ := receiver.get("received"); return n == sent })
	b.ReportMetric(float64(bytes)/float64(b.N), "B/req")
	b.ReportMetric(float64(hashes)/float64(b.N), "hashes/req")
	b.ReportMetric(float64(sent)/elapsed.Seconds(), "msgs/s")
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "req/s")
}

// BenchmarkShareWorstCase: every request a prompt of about 2,000 tokens
// seen nowhere before, so every block is new and goes on the wire, as
// fast as the loop runs: beyond MaxPending hashes an interval the rest
// are dropped (counted).
func BenchmarkShareWorstCase(b *testing.B) {
	ns := natstest.Start(b)
	sender := newCounts()
	x := NewIndex(65536, time.Hour)
	s, err := NewSharer(SharerOptions{Conn: connect(b, ns.URL()), Replica: "r1", Index: x, Interval: 50 * time.Millisecond, Observe: sender.observe})
	if err != nil {
		b.Fatal(err)
	}
	ps := Parser{BlockBytes: 256, Chain: true}
	t := Target{"gpu-a:11434", "llama3.2:latest"}
	start := time.Now()
	for i := 0; b.Loop(); i++ {
		body := fmt.Sprintf(`{"model":"m","prompt":%q}`, fmt.Sprint(i)+strings.Repeat(" a unique prompt", 500))
		p := ps.Parse("/api/generate", []byte(body), nil)
		s.Inserted(t, x.Insert(t, &p, time.Now(), time.Minute, nil))
	}
	elapsed := time.Since(start)
	s.Close()
	sent, bytes := sender.get("sent")
	dropped, _ := sender.get("dropped")
	b.ReportMetric(float64(bytes)/float64(b.N), "B/req")
	b.ReportMetric(float64(dropped)/float64(b.N), "dropped/req")
	b.ReportMetric(float64(sent)/elapsed.Seconds(), "msgs/s")
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "req/s")
}
