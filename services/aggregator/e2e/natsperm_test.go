package e2e

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/droverhq/drover/pkg/config"
	"github.com/droverhq/drover/pkg/natsconn"
	"github.com/droverhq/drover/pkg/usage"
	"github.com/droverhq/drover/pkg/usagepub"
	"github.com/droverhq/drover/services/aggregator/internal/lease"
	"github.com/droverhq/drover/testkit/chtest"
	"github.com/droverhq/drover/testkit/natstest"
	"github.com/droverhq/drover/testkit/ollamatest"
)

// The tests in this file run against a nats-server loaded from the shipped
// deploy/nats/nats.conf (natstest.StartShipped) and log in as the
// services do, through natsconn.

// asyncErrs collects what the server refused a connection, as the client
// hears it (nats.ErrorHandler).
type asyncErrs struct {
	mu   sync.Mutex // guards errs
	errs []error
}

func (a *asyncErrs) add(_ *nats.Conn, _ *nats.Subscription, err error) {
	a.mu.Lock()
	a.errs = append(a.errs, err)
	a.mu.Unlock()
}

// violation reports whether the server refused subject as a permission
// violation of the given kind ("Publish" or "Subscription").
func (a *asyncErrs) violation(kind, subject string) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, err := range a.errs {
		if errors.Is(err, nats.ErrPermissionViolation) && strings.Contains(err.Error(), kind+` to "`+subject+`"`) {
			return true
		}
	}
	return false
}

func (a *asyncErrs) all() []error {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]error(nil), a.errs...)
}

// login connects as user through natsconn and records every refusal.
func login(t *testing.T, ns *natstest.Server, user, password string) (*nats.Conn, *asyncErrs) {
	t.Helper()
	errs := &asyncErrs{}
	nc, err := natsconn.Connect(config.NATS{URL: ns.URL(), User: user, Password: config.Secret(password)},
		"drover-"+user+" test", slog.New(slog.DiscardHandler), nats.ErrorHandler(errs.add))
	if err != nil {
		t.Fatalf("logging in as %s: %v", user, err)
	}
	t.Cleanup(nc.Close)
	return nc, errs
}

func asProxy(t *testing.T, ns *natstest.Server) (*nats.Conn, *asyncErrs) {
	return login(t, ns, "proxy", natstest.ProxyPassword)
}

func asAggregator(t *testing.T, ns *natstest.Server) (*nats.Conn, *asyncErrs) {
	return login(t, ns, "aggregator", natstest.AggregatorPassword)
}

// refused asserts that the server answered the publish to subject with a
// permission violation (and, for a request, that no answer came).
func refused(t *testing.T, errs *asyncErrs, subject string, requestErr error) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !errs.violation("Publish", subject) {
		if time.Now().After(deadline) {
			t.Fatalf("no permission violation for a publish to %s; the client heard %v (request error %v)", subject, errs.all(), requestErr)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func testCtx(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), d)
	t.Cleanup(cancel)
	return ctx
}

// usageStream creates the usage stream as the aggregator does, with the
// republishing to usage.live.> the proxies' live totals follow.
func usageStream(t *testing.T, js jetstream.JetStream) jetstream.Stream {
	t.Helper()
	s, err := usage.EnsureStream(testCtx(t, 10*time.Second), js, usage.StreamConfig{Name: "USAGE", MaxAge: time.Hour, DuplicateWindow: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	cfg := s.CachedInfo().Config
	if cfg.RePublish == nil {
		cfg.RePublish = &jetstream.RePublish{Source: config.UsageSubjectPrefix + ">", Destination: config.UsageLiveSubjectPrefix + ">"}
		if s, err = js.UpdateStream(testCtx(t, 10*time.Second), cfg); err != nil {
			t.Fatal(err)
		}
	}
	return s
}

func msgs(t *testing.T, s jetstream.Stream) uint64 {
	t.Helper()
	info, err := s.Info(testCtx(t, 5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	return info.State.Msgs
}

// Attacks (a) and (d) without credentials: nobody gets in anonymously, so
// a usage event claiming 2,000,000,000 tokens cannot be published and the
// JetStream API cannot be called; a wrong password is refused as well, and
// natsconn says which config keys to check.
func TestShippedNATSRefusesAnonymous(t *testing.T) {
	ns := natstest.StartShipped(t)
	agg, _ := asAggregator(t, ns)
	js, _ := jetstream.New(agg)
	s := usageStream(t, js)

	_, err := nats.Connect(ns.URL())
	if !errors.Is(err, nats.ErrAuthorization) {
		t.Fatalf("anonymous connection: %v, want %v", err, nats.ErrAuthorization)
	}
	// What the attacker sent: one event with two billion tokens, and the
	// stream's deletion.
	forged := usage.Event{Schema: usage.SchemaVersion, ID: usage.NewID(), Time: time.Now().UTC(), Endpoint: "gpu1",
		Model: "llama3", APIKey: "team-b", Route: "/api/chat", Status: 200, InputTokens: usage.Int64(2_000_000_000)}
	for _, o := range []nats.Option{nats.UserInfo("proxy", "wrong"), nats.UserInfo("nobody", "x"), nats.Token("x")} {
		nc, err := nats.Connect(ns.URL(), o)
		if !errors.Is(err, nats.ErrAuthorization) {
			if nc != nil {
				nc.Publish(usage.Subject(forged.ID, 8), usage.AppendJSON(nil, &forged)) //nolint:errcheck // counted below
				nc.Request("$JS.API.STREAM.DELETE.USAGE", nil, time.Second)             //nolint:errcheck // checked below
				nc.Close()
			}
			t.Fatalf("connection with bad credentials: %v, want %v", err, nats.ErrAuthorization)
		}
	}
	_, err = natsconn.Connect(config.NATS{URL: ns.URL(), User: "proxy", Password: "wrong"}, "drover-proxy test", slog.New(slog.DiscardHandler))
	if !errors.Is(err, nats.ErrAuthorization) || !strings.Contains(err.Error(), "nats.password") {
		t.Fatalf("natsconn with a wrong password: %v, want an authorization error naming nats.password", err)
	}
	if n := msgs(t, s); n != 0 {
		t.Fatalf("the usage stream holds %d messages, want none", n)
	}
}

// What a proxy's NATS user may do, run through the code the proxy runs: the
// publisher (stream info, fast batches, acks on its inbox), fleet state on
// drover.>, live totals on usage.live.>, and the key bucket drover_keys
// (create, put, get, watch, list, delete, purge). Not one permission
// violation on the way.
func TestShippedNATSProxyMayDoItsJob(t *testing.T) {
	ns := natstest.StartShipped(t)
	agg, _ := asAggregator(t, ns)
	ajs, _ := jetstream.New(agg)
	s := usageStream(t, ajs)
	nc, errs := asProxy(t, ns)

	live := make(chan *nats.Msg, 64)
	if _, err := nc.ChanSubscribe(config.UsageLiveSubjectPrefix+">", live); err != nil {
		t.Fatal(err)
	}
	fleet := make(chan *nats.Msg, 64)
	if _, err := nc.ChanSubscribe("drover.>", fleet); err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	pub, err := usagepub.New(nc, usagepub.WithConfig(config.DefaultNATS(), config.Usage{SpoolDir: t.TempDir()}),
		usagepub.WithLogger(slog.New(slog.DiscardHandler)))
	if err != nil {
		t.Fatal(err)
	}
	for range 20 {
		pub.Record(usage.Event{Time: time.Now().UTC(), Endpoint: "gpu1", Model: "llama3", APIKey: "team-a", Route: "/api/chat", Status: 200, InputTokens: usage.Int64(1)})
	}
	waitFor(t, 10*time.Second, "20 events in the stream", func() bool { return pub.Stats().Published == 20 })
	if err := pub.Close(testCtx(t, 10*time.Second)); err != nil {
		t.Fatal(err)
	}
	if n := msgs(t, s); n != 20 {
		t.Fatalf("stream holds %d events, want 20", n)
	}
	select {
	case m := <-live:
		if m.Header.Get("Nats-Sequence") == "" {
			t.Fatalf("republished message without Nats-Sequence: %v", m.Header)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("nothing republished on usage.live.> reached the proxy")
	}
	// Live totals read the last message of a partition (no consumer).
	reply, err := nc.Request("$JS.API.STREAM.MSG.GET.USAGE", []byte(`{"last_by_subj":"usage.v1.>"}`), 5*time.Second)
	if err != nil {
		t.Fatalf("message get on USAGE: %v", err)
	}
	if !strings.Contains(string(reply.Data), `"seq":`) {
		t.Fatalf("message get on USAGE answered %s", reply.Data)
	}
	for _, subj := range []string{config.SubjectInFlight, config.SubjectInvalidate, config.SubjectLimits} {
		if err := nc.Publish(subj, []byte(`{}`)); err != nil {
			t.Fatal(err)
		}
		select {
		case m := <-fleet:
			if m.Subject != subj {
				t.Fatalf("got %s, want %s", m.Subject, subj)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("%s did not come back to a subscriber on drover.>", subj)
		}
	}

	// The key bucket, as the proxies' key store uses it.
	js, _ := jetstream.New(nc)
	ctx := testCtx(t, 20*time.Second)
	kv, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: "drover_keys", History: 1})
	if err != nil {
		t.Fatalf("creating the key bucket: %v (refused: %v)", err, errs.all())
	}
	w, err := kv.WatchAll(ctx)
	if err != nil {
		t.Fatalf("watching the key bucket: %v (refused: %v)", err, errs.all())
	}
	if e := <-w.Updates(); e != nil {
		t.Fatalf("empty bucket, yet the watcher's first entry is %v", e)
	}
	if _, err := kv.Put(ctx, "team-a", []byte(`{"id":"team-a"}`)); err != nil {
		t.Fatal(err)
	}
	select {
	case e := <-w.Updates():
		if e == nil || e.Key() != "team-a" {
			t.Fatalf("watcher got %v, want team-a", e)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the watcher did not see the put")
	}
	if e, err := kv.Get(ctx, "team-a"); err != nil || string(e.Value()) != `{"id":"team-a"}` {
		t.Fatalf("get: %v %v", e, err)
	}
	if _, err := kv.Put(ctx, "team-b", []byte(`{}`)); err != nil {
		t.Fatal(err)
	}
	if err := kv.Delete(ctx, "team-b"); err != nil {
		t.Fatal(err)
	}
	if err := kv.Purge(ctx, "team-a"); err != nil {
		t.Fatal(err)
	}
	if _, err := kv.ListKeys(ctx); err != nil && !errors.Is(err, jetstream.ErrNoKeysFound) {
		t.Fatal(err)
	}
	if _, err := js.KeyValue(ctx, "drover_keys"); err != nil {
		t.Fatal(err)
	}
	if err := w.Stop(); err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	if e := errs.all(); len(e) > 0 {
		t.Fatalf("the proxy's own work met refusals: %v", e)
	}
}

// What a proxy's NATS user may not do: consume or ack the usage stream
// (what the aggregator does), create, change, purge or delete any stream
// it does not own, touch the aggregator's leases, write dead letters, or
// read raw usage events. Each is refused by the server as a permission
// violation, and the stream is untouched. Attack (d) with the proxies'
// credentials is among them.
func TestShippedNATSProxyIsConfined(t *testing.T) {
	ns := natstest.StartShipped(t)
	agg, _ := asAggregator(t, ns)
	ajs, _ := jetstream.New(agg)
	s := usageStream(t, ajs)
	if _, err := ajs.CreateOrUpdateConsumer(testCtx(t, 5*time.Second), "USAGE", jetstream.ConsumerConfig{Durable: "drover-aggregator-p0", FilterSubject: "usage.v1.0", AckPolicy: jetstream.AckExplicitPolicy}); err != nil {
		t.Fatal(err)
	}
	if _, err := lease.Open(testCtx(t, 5*time.Second), ajs, "drover_aggregator", "a1", time.Minute, 1); err != nil {
		t.Fatal(err)
	}
	nc, errs := asProxy(t, ns)
	js, _ := jetstream.New(nc)
	short := func() context.Context { return testCtx(t, 500*time.Millisecond) }

	_, err := js.CreateConsumer(short(), "USAGE", jetstream.ConsumerConfig{Name: "thief", AckPolicy: jetstream.AckExplicitPolicy})
	refused(t, errs, "$JS.API.CONSUMER.CREATE.USAGE.thief", err)
	_, err = js.CreateConsumer(short(), "USAGE", jetstream.ConsumerConfig{Durable: "thief", FilterSubject: "usage.v1.>"})
	refused(t, errs, "$JS.API.CONSUMER.CREATE.USAGE.thief.usage.v1.>", err)
	_, err = js.OrderedConsumer(short(), "USAGE", jetstream.OrderedConsumerConfig{})
	if err == nil {
		t.Fatal("an ordered consumer on USAGE was created for the proxy")
	}
	_, err = js.Consumer(short(), "USAGE", "drover-aggregator-p0")
	refused(t, errs, "$JS.API.CONSUMER.INFO.USAGE.drover-aggregator-p0", err)
	_, err = nc.Request("$JS.API.CONSUMER.MSG.NEXT.USAGE.drover-aggregator-p0", []byte(`{"batch":1}`), 500*time.Millisecond)
	refused(t, errs, "$JS.API.CONSUMER.MSG.NEXT.USAGE.drover-aggregator-p0", err)
	ack := "$JS.ACK.USAGE.drover-aggregator-p0.1.1.1.1700000000000000000.0"
	err = nc.Publish(ack, []byte("+ACK"))
	refused(t, errs, ack, err)
	err = js.DeleteStream(short(), "USAGE")
	refused(t, errs, "$JS.API.STREAM.DELETE.USAGE", err)
	_, err = nc.Request("$JS.API.STREAM.PURGE.USAGE", []byte(`{}`), 500*time.Millisecond)
	refused(t, errs, "$JS.API.STREAM.PURGE.USAGE", err)
	_, err = js.CreateOrUpdateStream(short(), jetstream.StreamConfig{Name: "USAGE", Subjects: []string{"usage.v1.>"}})
	refused(t, errs, "$JS.API.STREAM.UPDATE.USAGE", err)
	_, err = js.CreateStream(short(), jetstream.StreamConfig{Name: "EVIL", Subjects: []string{"evil.>"}})
	refused(t, errs, "$JS.API.STREAM.CREATE.EVIL", err)
	err = js.DeleteStream(short(), "KV_drover_aggregator")
	refused(t, errs, "$JS.API.STREAM.DELETE.KV_drover_aggregator", err)
	err = js.DeleteStream(short(), "KV_drover_keys")
	refused(t, errs, "$JS.API.STREAM.DELETE.KV_drover_keys", err)
	_, err = nc.Request("$JS.API.STREAM.PURGE.KV_drover_keys", []byte(`{}`), 500*time.Millisecond)
	refused(t, errs, "$JS.API.STREAM.PURGE.KV_drover_keys", err)
	err = nc.Publish("$KV.drover_aggregator.partition.0", []byte("proxy"))
	refused(t, errs, "$KV.drover_aggregator.partition.0", err)
	err = nc.Publish("drover.usage.deadletter", []byte("x"))
	refused(t, errs, "drover.usage.deadletter", err)
	_, err = nc.Request("$JS.API.DIRECT.GET.USAGE", []byte(`{"seq":1}`), 500*time.Millisecond)
	refused(t, errs, "$JS.API.DIRECT.GET.USAGE", err)
	for _, subj := range []string{"usage.live.0", "usage.v2.0", "anything.else", "_INBOX_drover_aggregator.x"} {
		err := nc.Publish(subj, []byte("x"))
		refused(t, errs, subj, err)
	}

	// Raw usage events (every team's) are not the proxies' to read.
	for _, subj := range []string{"usage.v1.>", "drover.usage.deadletter", "$JS.API.>", "_INBOX.>", "_INBOX_drover_aggregator.>"} {
		if _, err := nc.Subscribe(subj, func(*nats.Msg) {}); err != nil {
			t.Fatal(err)
		}
		deadline := time.Now().Add(5 * time.Second)
		for !errs.violation("Subscription", subj) {
			if time.Now().After(deadline) {
				t.Fatalf("subscribing to %s was not refused; the client heard %v", subj, errs.all())
			}
			time.Sleep(5 * time.Millisecond)
		}
	}

	info, err := s.Info(testCtx(t, 5*time.Second))
	if err != nil {
		t.Fatalf("the usage stream is gone: %v", err)
	}
	if info.State.Consumers != 1 {
		t.Fatalf("the usage stream has %d consumers, want only the aggregator's", info.State.Consumers)
	}
}

// The aggregator's user owns the stream, its consumers and its leases, and
// nothing else: it cannot publish usage events (it could forge usage
// otherwise) or fleet state, or touch the key bucket.
func TestShippedNATSAggregatorIsConfined(t *testing.T) {
	ns := natstest.StartShipped(t)
	nc, errs := asAggregator(t, ns)
	js, _ := jetstream.New(nc)
	usageStream(t, js)
	prx, _ := asProxy(t, ns)
	pjs, _ := jetstream.New(prx)
	if _, err := pjs.CreateOrUpdateKeyValue(testCtx(t, 5*time.Second), jetstream.KeyValueConfig{Bucket: "drover_keys"}); err != nil {
		t.Fatal(err)
	}
	ctx := testCtx(t, 20*time.Second)
	if _, err := pjs.Publish(ctx, "usage.v1.0", []byte(`{}`)); err != nil {
		t.Fatal(err)
	}

	// Its own work: consume, ack, leases, dead letters.
	cons, err := js.CreateOrUpdateConsumer(ctx, "USAGE", jetstream.ConsumerConfig{Durable: "drover-aggregator-p0", FilterSubject: "usage.v1.0", AckPolicy: jetstream.AckExplicitPolicy})
	if err != nil {
		t.Fatal(err)
	}
	batch, err := cons.Fetch(1, jetstream.FetchMaxWait(5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for m := range batch.Messages() {
		if err := m.DoubleAck(ctx); err != nil {
			t.Fatal(err)
		}
		n++
	}
	if n != 1 {
		t.Fatalf("fetched %d messages, want 1", n)
	}
	if _, err := cons.Info(ctx); err != nil {
		t.Fatal(err)
	}
	if err := js.DeleteConsumer(ctx, "USAGE", "drover-aggregator-p0"); err != nil {
		t.Fatal(err)
	}
	tb, err := lease.Open(ctx, js, "drover_aggregator", "a1", time.Minute, 1)
	if err != nil {
		t.Fatal(err)
	}
	if err := tb.Heartbeat(ctx); err != nil {
		t.Fatal(err)
	}
	if k, err := tb.Instances(ctx); err != nil || k != 1 {
		t.Fatalf("instances %d, %v", k, err)
	}
	rev, err := tb.Acquire(ctx, 0)
	if err != nil {
		t.Fatal(err)
	}
	if rev, err = tb.Renew(ctx, 0, rev); err != nil {
		t.Fatal(err)
	}
	if h, err := tb.Holder(ctx, 0); err != nil || h != "a1" {
		t.Fatalf("holder %q, %v", h, err)
	}
	if err := tb.Release(ctx, 0, rev); err != nil {
		t.Fatal(err)
	}
	if err := tb.Leave(ctx); err != nil {
		t.Fatal(err)
	}
	if err := nc.Publish(config.DefaultDeadLetterSubject, []byte("x")); err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	if e := errs.all(); len(e) > 0 {
		t.Fatalf("the aggregator's own work met refusals: %v", e)
	}

	short := func() context.Context { return testCtx(t, 500*time.Millisecond) }
	for _, subj := range []string{"usage.v1.3", config.SubjectInFlight, config.SubjectInvalidate, config.SubjectLimits, "usage.live.3", "$KV.drover_keys.team-a"} {
		err := nc.Publish(subj, []byte(`{"replica":"ghost"}`))
		refused(t, errs, subj, err)
	}
	_, err = js.Publish(short(), "usage.v1.5", []byte(`{}`))
	refused(t, errs, "usage.v1.5", err)
	err = js.DeleteStream(short(), "USAGE")
	refused(t, errs, "$JS.API.STREAM.DELETE.USAGE", err)
	err = js.DeleteStream(short(), "KV_drover_keys")
	refused(t, errs, "$JS.API.STREAM.DELETE.KV_drover_keys", err)
	_, err = js.KeyValue(short(), "drover_keys")
	refused(t, errs, "$JS.API.STREAM.INFO.KV_drover_keys", err)
	if _, err := nc.Subscribe("drover.>", func(*nats.Msg) {}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "the subscription to drover.> to be refused", func() bool { return errs.violation("Subscription", "drover.>") })
}

// The real binaries against the shipped NATS config, each logged in as its
// own user: a proxy started before the aggregator spools (its user may not
// create the usage stream, and it says once what it waits for), the
// aggregator creates the stream, and every token the backend reported
// reaches ClickHouse. Neither service meets a single refusal on the way
// (natsconn logs every one), whatever else the proxy runs over NATS (fleet
// state, live totals, the key bucket).
func TestShippedNATSPipeline(t *testing.T) {
	ns := natstest.StartShipped(t)
	ch := chtest.Start(t).Addr()
	fakes, urls := startFakes(t, 1, ollamatest.Config{Chunks: 3})
	common := []string{
		"DROVER_NATS_URL=" + ns.URL(),
		"DROVER_CLICKHOUSE_ADDR=" + ch,
		"DROVER_BACKENDS=" + strings.Join(urls, ","),
		"DROVER_AUTH_KEYS=team-a:key-aaaaaaaa",
		"DROVER_LOG_LEVEL=info",
	}
	addr := freeAddr(t)
	proxy := start(t, "drover-proxy", append(common, "DROVER_LISTEN="+addr, "DROVER_REPLICA=proxy-0",
		"DROVER_NATS_USER=proxy", "DROVER_NATS_PASSWORD="+natstest.ProxyPassword,
		"DROVER_USAGE_SPOOL_DIR="+filepath.Join(t.TempDir(), "spool")))
	base := "http://" + addr
	waitHTTP(t, base+"/")
	logOf := func(p *proc) string {
		p.mu.Lock()
		defer p.mu.Unlock()
		return p.log.String()
	}
	const missing = "usage stream USAGE not found: is the aggregator running?"
	waitFor(t, 30*time.Second, "the proxy to notice the missing stream", func() bool { return strings.Contains(logOf(proxy), missing) })

	client := &http.Client{Timeout: 30 * time.Second}
	body := `{"model":"tiny","messages":[{"role":"user","content":"hello there"}],"stream":false}`
	for range 10 {
		if err := post(t.Context(), client, base+"/api/chat", "key-aaaaaaaa", body); err != nil {
			t.Fatal(err)
		}
	}
	aggMetrics := freeAddr(t)
	agg := start(t, "drover-aggregator", append(common, "DROVER_AGGREGATOR_METRICS_LISTEN="+aggMetrics,
		"DROVER_AGGREGATOR_FLUSH_INTERVAL=100ms", "DROVER_REPLICA=agg",
		"DROVER_NATS_USER=aggregator", "DROVER_NATS_PASSWORD="+natstest.AggregatorPassword))
	waitHTTP(t, "http://"+aggMetrics+"/health")
	for range 10 {
		if err := post(t.Context(), client, base+"/api/chat", "key-aaaaaaaa", body); err != nil {
			t.Fatal(err)
		}
	}
	c := fakes[0].Counters()
	if c.Completed != 20 || c.PromptEvalCount == 0 || c.EvalCount == 0 {
		t.Fatalf("the backend counted %+v: the requests exercised nothing", c)
	}

	db, err := clickhouse.Open(&clickhouse.Options{Addr: []string{ch}, Auth: clickhouse.Auth{Database: "drover", Username: "default"}})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var in, out, n uint64
	waitFor(t, 60*time.Second, "ClickHouse to hold all 20 requests", func() bool {
		err := db.QueryRow(t.Context(), "SELECT sum(input_tokens) AS i, sum(output_tokens) AS o, sum(requests) AS n FROM token_usage_minute").Scan(&in, &out, &n)
		return err == nil && n == 20
	})
	if int64(in) != c.PromptEvalCount || int64(out) != c.EvalCount {
		t.Fatalf("ClickHouse holds %d/%d tokens, the backend reported %d/%d", in, out, c.PromptEvalCount, c.EvalCount)
	}
	if k := strings.Count(logOf(proxy), missing); k != 1 {
		t.Errorf("the proxy logged the missing stream %d times, want once", k)
	}
	for name, p := range map[string]*proc{"drover-proxy": proxy, "drover-aggregator": agg} {
		l := logOf(p)
		for _, bad := range []string{"Permissions Violation", "lacks the permission", "refused the credentials"} {
			if strings.Contains(l, bad) {
				t.Errorf("%s met a refusal (%q) with the shipped permissions:\n%s", name, bad, tail(l, 3000))
			}
		}
	}
}
