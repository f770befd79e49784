package launch

import (
	"context"
	"os"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/droverhq/drover/pkg/config"
	"github.com/droverhq/drover/pkg/usage"
	"github.com/droverhq/drover/pkg/usagepub"
)

// natsBinEnv names the nats-server binary BenchmarkNATSServerPerEvent runs
// (make bench builds it as bin/nats-server).
const natsBinEnv = "DROVER_NATS_BIN"

// BenchmarkNATSServerPerEvent measures what one usage event costs the
// nats-server process alone, in CPU time (user + system, /proc), with no
// proxy, backend or load tool beside it: the floor under the publishing
// cost drover-bench's drover+nats target measures. Each case stores b.N
// events of the size a proxy sends (about 300 bytes), one JetStream
// message each, and waits for all of them to be acknowledged:
//
//   - usagepub: the proxy's own publisher (spool, fast batches of up to
//     500, Nats-Msg-Id), on the stream as the aggregator creates it
//     (republished to usage.live.>, 2 minute duplicate window), as fast as
//     it goes, and at 5,000 events/s (about what one proxy on this machine
//     produces in drover-bench: batches of about 250 every 50 ms);
//   - async-msgid: plain JetStream asynchronous publishes, one ack per
//     message, with Nats-Msg-Id, on the same stream;
//   - async-msgid-norepublish: the same without the republish;
//   - async-nomsgid-norepublish: and without message ids (no duplicate
//     window to keep);
//
// the last three also at 5,000 events/s.
//
// Run: DROVER_NATS_BIN=$PWD/bin/nats-server go test -run '^$' -bench
// NATSServerPerEvent -benchtime 100000x ./internal/launch/ (in
// services/bench). The CPU clock ticks every 10 ms, so b.N should make
// the server busy for seconds.
func BenchmarkNATSServerPerEvent(b *testing.B) {
	bin := os.Getenv(natsBinEnv)
	if bin == "" {
		b.Skip(natsBinEnv + " is not set: give the nats-server binary to measure")
	}
	ev := usage.Event{Schema: usage.SchemaVersion, Time: time.Now().UTC(), Replica: "r1", Endpoint: "fake", Model: "tiny",
		APIKey: "anonymous", Route: "/api/chat", API: "ollama", Status: 200, InputTokens: usage.Int64(12), OutputTokens: usage.Int64(20),
		DurationMs: 3.2, TTFBMs: 1.1, Attempts: 1}
	d := config.DefaultNATS()
	full := usage.StreamConfig{Name: d.Stream, MaxAge: d.MaxAge, MaxBytes: d.MaxBytes, DuplicateWindow: d.DuplicateWindow}
	cases := []struct {
		name      string
		republish bool
		msgID     bool
		usagepub  bool
		rate      int // events/s; 0: as fast as the server takes them
	}{
		{"usagepub", true, true, true, 0},
		{"usagepub-5000/s", true, true, true, 5000},
		{"async-msgid", true, true, false, 0},
		{"async-msgid-norepublish", false, true, false, 0},
		{"async-nomsgid-norepublish", false, false, false, 0},
		{"async-msgid-5000/s", true, true, false, 5000},
		{"async-msgid-norepublish-5000/s", false, true, false, 5000},
		{"async-nomsgid-norepublish-5000/s", false, false, false, 5000},
	}
	for _, tc := range cases {
		b.Run(tc.name, func(b *testing.B) {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
			defer cancel()
			dir := b.TempDir()
			srv, err := StartNATSProcess(ctx, bin, dir)
			if err != nil {
				b.Fatal(err)
			}
			defer srv.Stop()
			nc, err := nats.Connect(srv.URL())
			if err != nil {
				b.Fatal(err)
			}
			defer nc.Close()
			js, err := jetstream.New(nc)
			if err != nil {
				b.Fatal(err)
			}
			if tc.republish {
				_, err = usage.EnsureStream(ctx, js, full)
			} else {
				_, err = js.CreateStream(ctx, jetstream.StreamConfig{Name: full.Name, Subjects: []string{config.UsageSubjectPrefix + ">"},
					Storage: jetstream.FileStorage, MaxAge: full.MaxAge, MaxBytes: full.MaxBytes, Duplicates: full.DuplicateWindow})
			}
			if err != nil {
				b.Fatal(err)
			}
			ids := make([]string, b.N)
			for i := range ids {
				ids[i] = usage.NewID()
			}
			var pub *usagepub.Publisher
			if tc.usagepub {
				if pub, err = usagepub.New(nc, usagepub.WithSpool(b.TempDir(), 1<<30)); err != nil {
					b.Fatal(err)
				}
			}
			cpu0 := srv.proc.CPU()
			b.ResetTimer()
			start := time.Now()
			if pub != nil {
				pace := newPacer(tc.rate)
				for _, id := range ids {
					pace.wait()
					e := ev
					e.ID = id
					pub.Record(e)
				}
				if err := pub.Close(ctx); err != nil {
					b.Fatal(err)
				}
				if st := pub.Stats(); st.Published+st.Replayed != uint64(b.N) {
					b.Fatalf("published %d of %d events", st.Published+st.Replayed, b.N)
				}
			} else {
				publishAsync(ctx, b, js, ev, ids, tc.msgID, newPacer(tc.rate))
			}
			el := time.Since(start)
			b.StopTimer()
			cpu := srv.proc.CPU() - cpu0
			b.ReportMetric(float64(cpu.Microseconds())/float64(b.N), "server-µs/event")
			b.ReportMetric(float64(b.N)/el.Seconds(), "events/s")
		})
	}
}

// publishAsync stores one message per id, at most 4,000 unacknowledged.
func publishAsync(ctx context.Context, b *testing.B, js jetstream.JetStream, ev usage.Event, ids []string, msgID bool, pace *pacer) {
	var buf []byte
	for _, id := range ids {
		pace.wait()
		e := ev
		e.ID = id
		buf = usage.AppendJSON(buf[:0], &e)
		m := &nats.Msg{Subject: usage.Subject(id, 8), Data: append([]byte(nil), buf...), Header: nats.Header{}}
		if msgID {
			m.Header.Set(jetstream.MsgIDHeader, id)
		}
		if _, err := js.PublishMsgAsync(m, jetstream.WithStallWait(time.Minute)); err != nil {
			b.Fatal(err)
		}
	}
	select {
	case <-js.PublishAsyncComplete():
	case <-ctx.Done():
		b.Fatal("acks did not arrive")
	}
}

// pacer spaces calls at a rate, in steps of a millisecond (a proxy's
// events arrive spread out, not back to back).
type pacer struct {
	start time.Time
	rate  int
	n     int
}

func newPacer(rate int) *pacer { return &pacer{start: time.Now(), rate: rate} }

func (p *pacer) wait() {
	if p.rate == 0 {
		return
	}
	p.n++
	due := p.start.Add(time.Duration(p.n) * time.Second / time.Duration(p.rate))
	if d := time.Until(due); d > time.Millisecond {
		time.Sleep(d)
	}
}
