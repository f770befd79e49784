package usage_test

import (
	"context"
	"hash/fnv"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/droverhq/drover/pkg/config"
	"github.com/droverhq/drover/pkg/usage"
	"github.com/droverhq/drover/testkit/natstest"
)

// Every stored usage message is republished to usage.live.<p> with the
// stream's headers, whether EnsureStream created the stream or found one
// without republishing and updated it.
func TestEnsureStreamRepublishes(t *testing.T) {
	for _, existing := range []bool{false, true} {
		t.Run("existing="+strconv.FormatBool(existing), func(t *testing.T) {
			ctx := context.Background()
			ns := natstest.Start(t)
			nc, err := nats.Connect(ns.URL())
			if err != nil {
				t.Fatal(err)
			}
			defer nc.Close()
			js, err := jetstream.New(nc)
			if err != nil {
				t.Fatal(err)
			}
			if existing {
				// A stream as an older aggregator created it.
				if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "USAGE", Subjects: []string{config.UsageSubjectPrefix + ">"}}); err != nil {
					t.Fatal(err)
				}
			}
			s, err := usage.EnsureStream(ctx, js, usage.StreamConfig{Name: "USAGE", DuplicateWindow: time.Minute})
			if err != nil {
				t.Fatal(err)
			}
			info, err := s.Info(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if rp := info.Config.RePublish; rp == nil || rp.Source != "usage.v1.>" || rp.Destination != "usage.live.>" {
				t.Fatalf("stream republish %+v, want usage.v1.> to usage.live.>", rp)
			}

			live := make(chan *nats.Msg, 8)
			sub, err := nc.ChanSubscribe(config.UsageLiveSubjectPrefix+">", live)
			if err != nil {
				t.Fatal(err)
			}
			defer sub.Unsubscribe() //nolint:errcheck
			if err := nc.Flush(); err != nil {
				t.Fatal(err)
			}
			var seqs []uint64
			for _, subj := range []string{"usage.v1.2", "usage.v1.3", "usage.v1.2"} {
				ack, err := js.Publish(ctx, subj, []byte(`{"n":1}`))
				if err != nil {
					t.Fatal(err)
				}
				seqs = append(seqs, ack.Sequence)
			}
			// Nats-Last-Sequence is the previous sequence of the same
			// subject: 0 for the first on usage.v1.2 and usage.v1.3.
			want := []struct {
				subject, orig string
				seq, last     uint64
			}{
				{"usage.live.2", "usage.v1.2", seqs[0], 0},
				{"usage.live.3", "usage.v1.3", seqs[1], 0},
				{"usage.live.2", "usage.v1.2", seqs[2], seqs[0]},
			}
			for _, w := range want {
				var m *nats.Msg
				select {
				case m = <-live:
				case <-time.After(5 * time.Second):
					t.Fatalf("no republished message for %s", w.orig)
				}
				h := m.Header
				if m.Subject != w.subject || h.Get("Nats-Stream") != "USAGE" || h.Get("Nats-Subject") != w.orig ||
					h.Get("Nats-Sequence") != strconv.FormatUint(w.seq, 10) || h.Get("Nats-Last-Sequence") != strconv.FormatUint(w.last, 10) ||
					h.Get("Nats-Time-Stamp") == "" || string(m.Data) != `{"n":1}` {
					t.Fatalf("republished %s %v %q, want %s from %s seq %d last %d", m.Subject, h, m.Data, w.subject, w.orig, w.seq, w.last)
				}
			}
		})
	}
}

// More replicas than a single server can keep: the error says which key
// asked for them.
func TestEnsureStreamReplicasOnOneServer(t *testing.T) {
	ns := natstest.Start(t)
	nc, err := nats.Connect(ns.URL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	_, err = usage.EnsureStream(context.Background(), js, usage.StreamConfig{Name: "USAGE", Replicas: 3})
	if err == nil || !strings.Contains(err.Error(), "3 replicas (nats.replicas)") {
		t.Fatalf("got %v, want an error naming nats.replicas", err)
	}
	t.Log(err)
}

// An event's partition is FNV-1a of its id modulo the partition count, as
// it has been since the first release: a changed mapping would move events
// between partitions across an upgrade.
func TestPartitionIsFNV1a(t *testing.T) {
	for _, id := range []string{"", "a", "01JEXAMPLE0000000000000000", usage.NewID(), usage.NewID(), strings.Repeat("é", 40)} {
		h := fnv.New32a()
		h.Write([]byte(id))
		for _, n := range []int{2, 3, 8, 64} {
			if got, want := usage.Partition(id, n), int(h.Sum32()%uint32(n)); got != want {
				t.Errorf("Partition(%q, %d) = %d, want %d", id, n, got, want)
			}
		}
		if got := usage.Partition(id, 1); got != 0 {
			t.Errorf("Partition(%q, 1) = %d, want 0", id, got)
		}
	}
	var sink int
	if n := testing.AllocsPerRun(100, func() { sink += usage.Partition("01JEXAMPLE0000000000000000", 8) }); n != 0 {
		t.Errorf("Partition allocates %v times", n)
	}
}
