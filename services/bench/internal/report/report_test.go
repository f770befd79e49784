package report

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/droverhq/drover/services/bench/internal/loadgen"
	"github.com/droverhq/drover/services/bench/internal/suite"
)

func row(target string, closed bool, rps float64, p50, p99 time.Duration) suite.Row {
	mode := "open 2000/s"
	if closed {
		mode = "closed c=64"
	}
	return suite.Row{Target: target, Mode: mode, Closed: closed, Workload: "chat",
		Summary: loadgen.Summary{ReqPerSec: rps, P50: p50, P99: p99}}
}

func TestRatios(t *testing.T) {
	us := time.Microsecond
	cases := []struct {
		name string
		rows []suite.Row
		want []Ratio // compared on Metric, Valid, Met and Value
	}{
		{
			name: "throughput met and missed",
			rows: []suite.Row{row(suite.Direct, true, 9000, 0, 0), row(suite.Bare, true, 8000, 0, 0), row(suite.Drover, true, 6800, 0, 0)},
			want: []Ratio{{Metric: "throughput", Valid: true, Met: true, Value: 0.85}},
		},
		{
			name: "throughput missed",
			rows: []suite.Row{row(suite.Bare, true, 8000, 0, 0), row(suite.Drover, true, 4000, 0, 0)},
			want: []Ratio{{Metric: "throughput", Valid: true, Met: false, Value: 0.5}},
		},
		{
			name: "added latency",
			rows: []suite.Row{
				row(suite.Direct, false, 2000, 300*us, 1000*us),
				row(suite.Bare, false, 2000, 650*us, 2000*us),
				row(suite.Drover, false, 2000, 720*us, 3000*us),
			},
			want: []Ratio{
				{Metric: "added p50", Valid: true, Met: true, Value: 420.0 / 350.0},
				{Metric: "added p99", Valid: true, Met: false, Value: 2.0},
			},
		},
		{
			name: "bare adds nothing",
			rows: []suite.Row{
				row(suite.Direct, false, 2000, 300*us, 1000*us),
				row(suite.Bare, false, 2000, 300*us, 900*us),
				row(suite.Drover, false, 2000, 400*us, 1100*us),
			},
			want: []Ratio{{Metric: "added p50"}, {Metric: "added p99"}},
		},
		{
			name: "no drover",
			rows: []suite.Row{row(suite.Direct, true, 9000, 0, 0), row(suite.Bare, true, 8000, 0, 0)},
		},
		{
			name: "no bare",
			rows: []suite.Row{row(suite.Drover, true, 8000, 0, 0)},
			want: []Ratio{{Metric: "throughput"}},
		},
	}
	for _, c := range cases {
		got := Ratios(c.rows)
		if len(got) != len(c.want) {
			t.Errorf("%s: %d ratios %+v, want %d", c.name, len(got), got, len(c.want))
			continue
		}
		for i, w := range c.want {
			g := got[i]
			if g.Metric != w.Metric || g.Valid != w.Valid || g.Met != w.Met || abs(g.Value-w.Value) > 1e-9 {
				t.Errorf("%s: ratio %d = %+v, want %+v", c.name, i, g, w)
			}
		}
	}
}

func abs(x float64) float64 {
	if x < 0 {
		return -x
	}
	return x
}

func TestPrint(t *testing.T) {
	rows := []suite.Row{
		row(suite.Direct, true, 9000, time.Millisecond, 2*time.Millisecond),
		row(suite.Bare, true, 8000, time.Millisecond, 3*time.Millisecond),
		row(suite.Drover, true, 7000, 2*time.Millisecond, 4*time.Millisecond),
	}
	rows[2].Kinds = map[string]int{"status 502": 3}
	rows[2].Summary.Errors = 3
	rows[1].MaxLag = 25 * time.Millisecond
	doc := Document{Started: time.Unix(0, 0).UTC(), Settings: map[string]string{"rounds": "3"}, Rows: rows, Ratios: Ratios(rows)}

	var md bytes.Buffer
	if err := Markdown(&md, doc); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"| drover | closed c=64 | chat | 7000 | 2.000 | 4.000 | 3 |",
		"| chat | closed c=64 | throughput | 0.88 | >= 0.8 | yes |",
		"drover closed c=64 chat: 3 × status 502",
		"fell behind its open-loop schedule",
		"- bare closed c=64 chat: 25ms",
	} {
		if !strings.Contains(md.String(), want) {
			t.Errorf("Markdown lacks %q:\n%s", want, md.String())
		}
	}

	var js bytes.Buffer
	if err := JSON(&js, doc); err != nil {
		t.Fatal(err)
	}
	var back Document
	if err := json.Unmarshal(js.Bytes(), &back); err != nil {
		t.Fatal(err)
	}
	if len(back.Rows) != 3 || back.Rows[2].Summary.ReqPerSec != 7000 || len(back.Ratios) != 1 {
		t.Errorf("JSON round trip lost data: %+v", back)
	}
}

func TestPublishingRatios(t *testing.T) {
	rows := []suite.Row{
		row(suite.Bare, true, 8000, 0, 0),
		row(suite.Drover, true, 7000, 0, 0),
		row(suite.DroverNATS, true, 6790, 0, 0),
		row(suite.Drover, false, 2000, time.Millisecond, time.Millisecond),
		row(suite.DroverNATS, false, 2000, time.Millisecond, time.Millisecond),
	}
	got := PublishingRatios(rows)
	if len(got) != 1 || !got[0].Valid || !got[0].Met || got[0].Value < 0.969 || got[0].Value > 0.971 || got[0].Metric != "throughput" {
		t.Fatalf("got %+v, want one met throughput ratio of 0.97", got)
	}
	if r := PublishingRatios(rows[2:3]); len(r) != 1 || r[0].Valid {
		t.Errorf("without a drover row: %+v, want one invalid ratio", r)
	}
	rows[2].Summary.ReqPerSec = 6000
	if r := PublishingRatios(rows); r[0].Met {
		t.Errorf("0.86 counted as met: %+v", r)
	}
	// The Drover-versus-bare comparison is unchanged by the extra target.
	if r := Ratios(rows); len(r) != 3 || r[0].Value != 7000.0/8000 {
		t.Errorf("Ratios with drover+nats rows: %+v", r)
	}
	doc := Document{Rows: rows, Ratios: Ratios(rows), Publishing: PublishingRatios(rows)}
	var md bytes.Buffer
	if err := Markdown(&md, doc); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(md.String(), "| chat | closed c=64 | throughput | 0.86 | >= 0.97 | no | 6000 ÷ 7000 req/s |") {
		t.Errorf("Markdown lacks the publishing ratio:\n%s", md.String())
	}

	// With CPU measured: the proxy's own capacity, NATS reported beside it.
	rows[1].Summary.CPUPerReq = 60 * time.Microsecond
	rows[2].Summary.CPUPerReq = 62 * time.Microsecond
	rows[2].Summary.SideCPUPerReq = 11 * time.Microsecond
	got = PublishingRatios(rows)
	if len(got) != 2 || !got[1].Valid || !got[1].Met || got[1].Value < 0.967 || got[1].Value > 0.968 {
		t.Fatalf("got %+v, want a met capacity ratio of 60/62", got)
	}
	if want := "proxy 60.0 µs → 62.0 µs per request; NATS server 11.0 µs per request"; got[1].Note != want {
		t.Errorf("note %q, want %q", got[1].Note, want)
	}
	md.Reset()
	if err := Markdown(&md, Document{Rows: rows, Publishing: got}); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(md.String(), "| 62.0 + NATS 11.0 |") {
		t.Errorf("Markdown lacks the CPU column:\n%s", md.String())
	}
}

func TestBaselineRatios(t *testing.T) {
	rows := []suite.Row{
		row(suite.Drover, true, 6790, 0, 0),
		row(suite.Baseline, true, 7000, 0, 0),
		row(suite.Drover, false, 2000, time.Millisecond, time.Millisecond),
		row(suite.Baseline, false, 2000, time.Millisecond, time.Millisecond),
	}
	got := BaselineRatios(rows)
	if len(got) != 1 || !got[0].Valid || !got[0].Met || got[0].Value < 0.969 || got[0].Value > 0.971 {
		t.Fatalf("got %+v, want one met throughput ratio of 0.97", got)
	}
	if r := BaselineRatios(rows[:1]); len(r) != 0 {
		t.Errorf("without a baseline row: %+v, want none", r)
	}
	rows[0].Summary.ReqPerSec = 6700
	if r := BaselineRatios(rows); r[0].Met {
		t.Errorf("0.957 counted as met: %+v", r)
	}
	rows[0].Summary.CPUPerReq = 62 * time.Microsecond
	rows[1].Summary.CPUPerReq = 60 * time.Microsecond
	got = BaselineRatios(rows)
	if len(got) != 2 || got[1].Met || got[1].Value < 0.967 || got[1].Value > 0.968 {
		t.Fatalf("got %+v, want an unmet CPU ratio of 60/62", got)
	}
	var md bytes.Buffer
	if err := Markdown(&md, Document{Rows: rows, Baseline: got}); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(md.String(), "drover ÷ baseline") || !strings.Contains(md.String(), "60.0 µs → 62.0 µs per request") {
		t.Errorf("Markdown lacks the baseline comparison:\n%s", md.String())
	}
}
