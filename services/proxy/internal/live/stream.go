package live

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"

	"github.com/nats-io/nats.go"

	"github.com/droverhq/drover/pkg/config"
	"github.com/droverhq/drover/pkg/usage"
)

// storedMsg is the part of a stored usage message read here.
type storedMsg struct {
	Subject string `json:"subject"`
	Seq     uint64 `json:"seq"`
	Data    []byte `json:"data"`
}

// JetStream's error codes for "no message found" and "stream not found".
const (
	errNoMessage = 10037
	errNoStream  = 10059
)

// msgGet reads one message of the usage stream with JetStream's message
// get (a request to $JS.API.STREAM.MSG.GET.<stream>: a read, no consumer).
// found is false when the stream has no such message.
func (f *fleetTotals) msgGet(ctx context.Context, req any) (m storedMsg, found bool, err error) {
	subj := "$JS.API.STREAM.MSG.GET." + f.stream
	body, err := json.Marshal(req)
	if err != nil {
		return m, false, err
	}
	ctx, cancel := context.WithTimeout(ctx, getTimeout)
	defer cancel()
	reply, err := f.nc.RequestWithContext(ctx, subj, body)
	if err != nil {
		return m, false, fmt.Errorf("%s (the proxy's NATS user needs to publish there): %w", subj, err)
	}
	var resp struct {
		Message *storedMsg `json:"message"`
		Error   *struct {
			ErrCode     int    `json:"err_code"`
			Description string `json:"description"`
		} `json:"error"`
	}
	if err := json.Unmarshal(reply.Data, &resp); err != nil {
		return m, false, fmt.Errorf("%s: reading the answer: %w", subj, err)
	}
	switch {
	case resp.Error != nil && resp.Error.ErrCode == errNoMessage:
		return m, false, nil
	case resp.Error != nil && resp.Error.ErrCode == errNoStream:
		return m, false, fmt.Errorf("no stream %s yet (the aggregator creates it)", f.stream)
	case resp.Error != nil:
		return m, false, fmt.Errorf("%s: %s (error %d)", subj, resp.Error.Description, resp.Error.ErrCode)
	case resp.Message == nil:
		return m, false, fmt.Errorf("%s: an answer without a message", subj)
	}
	return *resp.Message, true, nil
}

// lastSeqs reads the last stream sequence of every partition (0 for one
// without messages) and of the whole stream.
func (f *fleetTotals) lastSeqs(ctx context.Context, parts []int) (map[int]uint64, uint64, error) {
	out := make(map[int]uint64, len(parts))
	all := config.UsageSubjectPrefix + ">"
	m, found, err := f.msgGet(ctx, map[string]any{"last_by_subj": all})
	if err != nil {
		return nil, 0, fmt.Errorf("reading the last sequence of %s: %w", all, err)
	}
	if !found {
		return out, 0, nil // an empty stream
	}
	if p, err := strconv.Atoi(strings.TrimPrefix(m.Subject, config.UsageSubjectPrefix)); err == nil && p >= len(parts) {
		f.mu.Lock()
		f.maxPart = max(f.maxPart, p)
		f.mu.Unlock()
		return nil, 0, fmt.Errorf("partition %d is beyond the %d read; building again with it", p, len(parts))
	}
	for _, p := range parts {
		pm, found, err := f.msgGet(ctx, map[string]any{"last_by_subj": usage.PartitionSubject(p)})
		if err != nil {
			return nil, 0, fmt.Errorf("reading the last sequence of %s: %w", usage.PartitionSubject(p), err)
		}
		if found {
			out[p] = pm.Seq
		}
	}
	return out, m.Seq, nil
}

// fill counts, for every partition, the events the stream holds above the
// partition's head up to before[p] (stored before the subscription, not in
// ClickHouse's sums yet), reading them one by one from the stream, at most
// f.maxFill in all; it moves the heads to before and reports how many
// events it read.
func (f *fleetTotals) fill(ctx context.Context, t *tally, parts []int, before map[int]uint64) (read int, err error) {
	for _, p := range parts {
		subj := usage.PartitionSubject(p)
		for next := t.head[p] + 1; next <= before[p]; {
			m, found, err := f.msgGet(ctx, map[string]any{"seq": next, "next_by_subj": subj})
			if err != nil {
				return read, fmt.Errorf("reading what clickhouse lacks of %s: %w", subj, err)
			}
			if !found || m.Seq > before[p] {
				break
			}
			if read++; read > f.maxFill {
				return read, fmt.Errorf("clickhouse is more than %d events behind the usage stream (is the aggregator running?): %s is committed up to sequence %d, the stream holds up to %d",
					f.maxFill, subj, t.head[p], before[p])
			}
			if ev, err := decode(m.Data); err == nil {
				t.sums.Add(ev)
			}
			next = m.Seq + 1
		}
		if before[p] > t.head[p] {
			t.head[p] = before[p]
			t.seq = max(t.seq, before[p])
		}
	}
	return read, nil
}

// parseLive reads a message the stream republished.
func parseLive(m *nats.Msg, stream string) (liveEvent, error) {
	var e liveEvent
	if got := m.Header.Get("Nats-Stream"); got != stream {
		return e, fmt.Errorf("from stream %q, not %s", got, stream)
	}
	p, err := strconv.Atoi(strings.TrimPrefix(m.Header.Get("Nats-Subject"), config.UsageSubjectPrefix))
	if err != nil || p < 0 || p > 1<<16 {
		return e, fmt.Errorf("not a usage partition: %q", m.Header.Get("Nats-Subject"))
	}
	e.part = p
	if e.seq, err = strconv.ParseUint(m.Header.Get("Nats-Sequence"), 10, 64); err != nil || e.seq == 0 {
		return e, fmt.Errorf("bad Nats-Sequence %q", m.Header.Get("Nats-Sequence"))
	}
	if e.last, err = strconv.ParseUint(m.Header.Get("Nats-Last-Sequence"), 10, 64); err != nil || e.last >= e.seq {
		return e, fmt.Errorf("bad Nats-Last-Sequence %q", m.Header.Get("Nats-Last-Sequence"))
	}
	ev, err := decode(m.Data)
	e.ev, e.valid = ev, err == nil
	return e, nil
}

// decode accepts what the aggregator stores and rejects what it
// dead-letters (usage.Validate), so that the stream adds exactly what
// ClickHouse will hold.
func decode(data []byte) (usage.Event, error) {
	var ev usage.Event
	if err := json.Unmarshal(data, &ev); err != nil {
		return ev, err
	}
	return ev, usage.Validate(ev)
}
