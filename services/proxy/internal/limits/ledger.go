package limits

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/droverhq/drover/pkg/apikey"
	"github.com/droverhq/drover/pkg/chstore"
	"github.com/droverhq/drover/pkg/config"
	"github.com/droverhq/drover/services/proxy/internal/auth"
	"github.com/droverhq/drover/services/proxy/internal/catalog"
	"github.com/droverhq/drover/services/proxy/internal/live"
)

// Options are what a Ledger reads. Conn and Store may be nil.
type Options struct {
	Replica string
	// Conn shares reservations and settlements with the other replicas
	// (core NATS, config.SubjectLimits) and, with Store, follows the usage
	// stream; nil enforces on this replica's requests only.
	Conn *nats.Conn
	// Store gives the day and month spend from before this replica
	// started (token_usage_minute); the usage stream (Stream, Partitions)
	// adds what was stored since.
	Store      *chstore.Store
	Stream     string
	Partitions int
	Config     config.Limits
	// Registerer takes drover_limit_refusals_total; nil: not registered.
	Registerer prometheus.Registerer
	Log        *slog.Logger
	// Heartbeat is how often the whole set of this replica's reservations
	// is sent (default 1s); a peer's reservations expire after
	// peerTTLBeats heartbeats without a message. Linger is the least time
	// between two messages of changes (default 2ms): a change after a
	// quiet spell goes at once, those during a busy one together.
	Heartbeat time.Duration
	Linger    time.Duration
	// Delay is the least message delay the ledger plans for (default
	// 20ms): a reservation of its own is recent, maybe unknown to peers,
	// until this long after it was sent, or twice the largest delay seen
	// lately on peers' messages when that is longer (at most maxDelay).
	// Recent reservations may take at most a 1/replicas share of what is
	// left of a limit (docs/limits.md).
	Delay time.Duration
	// Now is the clock (tests); default time.Now.
	Now func() time.Time
}

const (
	// peerTTLBeats heartbeats without a message expire a peer's
	// reservations (3s by default).
	peerTTLBeats = 3
	// idTTL is how long an event id is remembered as settled or streamed,
	// and how long a settlement waits for its event on the usage stream
	// before it is dropped from the pending spend.
	idTTL = 5 * time.Minute
	// maxDelay bounds the message delay planned for: a peer's clock far
	// off must not stop this replica admitting more than one request at a
	// time near a limit for long.
	maxDelay = time.Second
)

// Ledger admits requests against their keys' limits and settles them. It
// is safe for concurrent use. Close stops it.
type Ledger struct {
	opts    Options
	epoch   string // this process's, so a restarted replica is a new peer
	log     *slog.Logger
	refused *prometheus.CounterVec
	count   bool // admission "count": the naive baseline

	mu      sync.Mutex         // guards the fields below
	windows map[scope]*window  // every scope seen
	own     map[uint64]*resv   // this replica's outstanding reservations
	peers   map[string]*peer   // other replicas' (by replica/epoch)
	pending map[string]*settle // settlements the follower's tally lacks, by event id
	ids     map[string]*idSeen // recent event ids
	tally   *budgetTally       // the follower's current tally; nil without one
	maxTok  map[string]int64   // per key, its largest token limit seen (bounds peers' claims)
	nextID  uint64
	recent  []*resv       // own reservations peers may not know yet, oldest first
	lag     time.Duration // the largest delay of peers' messages lately
	outbox  wireMsg       // changes not yet sent
	local   string        // why enforcement is this replica's only ("" when fleet-wide)

	kick     chan struct{}
	follower *live.Follower
	sub      *nats.Subscription
	cancel   context.CancelFunc
	wg       sync.WaitGroup
	closed   atomic.Bool
}

// resv is one outstanding reservation.
type resv struct {
	key, model string
	tokens     int64
	// sent is when peers were sent it (zero: not yet; this replica's own
	// only). Until Delay after, it is recent even once settled: its
	// settlement is no better known to peers than it was.
	sent time.Time
}

// settle is a settlement not yet in the follower's tally.
type settle struct {
	key, model string
	tokens     int64
	day, month int64
	at         time.Time
}

// idSeen is what is known of a recent event id.
type idSeen struct {
	at                time.Time
	settled, streamed bool
}

// New starts a ledger.
func New(opts Options) *Ledger {
	if opts.Log == nil {
		opts.Log = slog.New(slog.DiscardHandler)
	}
	if opts.Heartbeat <= 0 {
		opts.Heartbeat = time.Second
	}
	if opts.Linger <= 0 {
		opts.Linger = 2 * time.Millisecond
	}
	if opts.Delay <= 0 {
		opts.Delay = 20 * time.Millisecond
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Config.DefaultOutputTokens <= 0 {
		opts.Config.DefaultOutputTokens = config.DefaultLimits().DefaultOutputTokens
	}
	var e [8]byte
	rand.Read(e[:]) //nolint:errcheck // never fails
	l := &Ledger{opts: opts, epoch: hex.EncodeToString(e[:]), log: opts.Log, count: opts.Config.Admission == "count",
		windows: map[scope]*window{}, own: map[uint64]*resv{}, peers: map[string]*peer{}, pending: map[string]*settle{},
		ids: map[string]*idSeen{}, maxTok: map[string]int64{}, kick: make(chan struct{}, 1)}
	l.refused = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "drover_limit_refusals_total", Help: "Requests refused by a key's limits, by key and reason (model_ prefix: a per-model limit).",
	}, []string{"key", "reason"})
	if opts.Registerer != nil {
		if err := opts.Registerer.Register(l.refused); err != nil {
			l.log.Warn("limits: refusals counter not registered", "err", err)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	l.cancel = cancel
	switch {
	case opts.Conn == nil:
		l.local = "nats.url is not set: limits hold on this replica's requests only, and day and month budgets count from its start"
	default:
		if err := l.subscribe(); err != nil {
			l.local = "not sharing with other replicas: " + err.Error()
		}
		l.wg.Add(1)
		go l.sendLoop(ctx)
		if opts.Store == nil {
			l.local = "clickhouse.addr is not set: day and month budgets count from this replica's start (with the other replicas' requests since)"
		} else {
			l.follower = live.Follow(live.FollowerOptions{Store: opts.Store, Conn: opts.Conn, Stream: opts.Stream, Partitions: opts.Partitions, Log: l.log}, budgetSums{l})
		}
	}
	if l.local != "" {
		l.log.Warn("limits: enforcing on partial knowledge", "reason", l.local)
	}
	return l
}

// Close stops sharing and following; outstanding reservations are
// dropped (peers expire them).
func (l *Ledger) Close() {
	if !l.closed.CompareAndSwap(false, true) {
		return
	}
	if l.sub != nil {
		l.sub.Unsubscribe() //nolint:errcheck // the connection may be gone
	}
	if l.follower != nil {
		l.follower.Close()
	}
	l.cancel()
	l.wg.Wait()
}

// win returns sc's window, rolled to c. Call with l.mu held.
func (l *Ledger) win(sc scope, c clock) *window {
	w := l.windows[sc]
	if w == nil {
		w = &window{}
		l.windows[sc] = w
	}
	w.roll(c)
	return w
}

// use is sc's figures at c. Call with l.mu held.
func (l *Ledger) use(sc scope, c clock) figures {
	w := l.win(sc, c)
	u := figures{requests: w.requests, tokens: w.tokens, inFlight: w.outCount}
	if l.tally != nil {
		d, m := l.tally.spent(sc, c)
		u.day, u.month = d+w.pDayTokens, m+w.pMonthTokens
	} else {
		u.day, u.month = w.dayTokens, w.monthTokens
	}
	if !l.count {
		// Reservations count as spent until they settle.
		u.requests += w.outCount
		u.tokens += w.outTokens
		u.day += w.outTokens
		u.month += w.outTokens
	}
	return u
}

// Admit reserves a request's estimate against p's limits for model, or
// refuses it. A nil Refusal means admitted: the Ticket must be settled
// (Settle with the usage event, or Release) exactly once, which later
// calls make safe. A request that fits the limit but not this replica's
// share of what is left while its recent reservations may be unknown to
// the other replicas waits (at most the planned message delay each time,
// until ctx ends) rather than being refused.
func (l *Ledger) Admit(ctx context.Context, p auth.Principal, model, route string, body []byte) (*Ticket, *Refusal) {
	if model != "" {
		model = catalog.Normalize(model)
	}
	mlim := modelLimit(p.ModelLimits, model)
	limited := !p.Limits.IsZero() || !mlim.IsZero()
	var est int64
	if limited {
		est = Estimate(route, body, l.opts.Config.DefaultOutputTokens)
	}
	for {
		t, r, wait := l.admit(p, model, est, limited, mlim)
		if wait == 0 {
			return t, r
		}
		select {
		case <-ctx.Done():
			return nil, r
		case <-time.After(wait):
		}
	}
}

// admit is one attempt of Admit: admitted, refused, or wait (and r, the
// refusal if the wait is cut short).
func (l *Ledger) admit(p auth.Principal, model string, est int64, limited bool, mlim apikey.Limits) (*Ticket, *Refusal, time.Duration) {
	key := p.ID
	c := clockAt(l.opts.Now())
	l.mu.Lock()
	defer l.mu.Unlock()
	replicas := int64(1 + len(l.peers))
	if limited {
		l.maxTok[key] = max(l.maxTok[key], maxTokenLimit(p.Limits), maxTokenLimit(mlim))
		var failed, waits []check
		var wait time.Duration
		for i, sc := range [2]scope{{key, ""}, {key, model}} {
			lim := p.Limits
			if i == 1 {
				lim = mlim
			}
			if lim.IsZero() {
				continue
			}
			u := l.use(sc, c)
			rc, rt, until := l.recentOf(sc, c)
			for _, ck := range checks(lim, u, est, c) {
				mine := rc
				if ck.reason == ReasonTokensPerMinute || ck.reason == ReasonTokensPerDay || ck.reason == ReasonTokensPerMonth {
					mine = rt
				}
				over, share := l.refuses(ck, mine, replicas)
				if i == 1 {
					ck.reason = "model_" + ck.reason
				}
				switch {
				case over:
					failed = append(failed, ck)
				case share:
					waits = append(waits, ck)
					wait = max(wait, until)
				}
			}
		}
		if hard := len(failed) > 0; hard || len(waits) > 0 {
			if !hard {
				failed = waits
			}
			r := refusal(key, model, failed, c)
			r.Header = headers(p.Limits, mlim, l.use(scope{key, ""}, c), l.use(scope{key, model}, c), c)
			if !hard {
				return nil, r, max(wait, time.Millisecond)
			}
			l.refused.WithLabelValues(key, r.Reason).Inc()
			return nil, r, 0
		}
	}
	l.nextID++
	t := &Ticket{l: l, id: l.nextID, key: key, model: model, est: est}
	r := &resv{key: key, model: model, tokens: est}
	l.own[t.id] = r
	l.hold(r, +1, c)
	if limited && !l.count && l.opts.Conn != nil {
		l.recent = append(l.recent, r)
	}
	if limited {
		t.header = headers(p.Limits, mlim, l.use(scope{key, ""}, c), l.use(scope{key, model}, c), c)
		if !l.count {
			l.outbox.Res = append(l.outbox.Res, wireRes{ID: t.id, Key: key, Model: model, Tokens: est})
			l.kickSend()
		}
	}
	return t, nil, 0
}

// refuses tests a check under the admission mode: over, it does not fit
// the limit; share, it fits but not this replica's share. mine is the
// part of ck.used that is this replica's recent reservations (maybe
// unknown to the other replicas yet): with any, a request must also fit
// in a 1/replicas share of what the others' view leaves, so that
// replicas admitting at once on stale views share the rest instead of
// each taking all of it. One request always may, so the fleet goes over
// by at most one request per other replica.
func (l *Ledger) refuses(ck check, mine, replicas int64) (over, share bool) {
	if l.count {
		// The baseline: admit while spent is under the limit.
		return ck.used >= ck.limit, false
	}
	if ck.used+ck.want > ck.limit {
		return true, false
	}
	if mine == 0 || replicas <= 1 {
		return false, false
	}
	left := ck.limit - (ck.used - mine)
	return false, (mine+ck.want)*replicas > left
}

// recentOf is the count and tokens of sc's recent reservations, and how
// long until the oldest of them is no longer recent; it drops from
// l.recent those peers know by now. Call with l.mu held.
func (l *Ledger) recentOf(sc scope, c clock) (count, tokens int64, until time.Duration) {
	delay := min(max(l.opts.Delay, 2*l.lag), maxDelay)
	i := 0
	for ; i < len(l.recent); i++ {
		r := l.recent[i]
		if r.sent.IsZero() || c.now.Sub(r.sent) < delay {
			break
		}
	}
	l.recent = l.recent[i:]
	for _, r := range l.recent {
		if !r.sent.IsZero() && c.now.Sub(r.sent) >= delay {
			continue
		}
		if r.key == sc.key && (sc.model == "" || r.model == sc.model) {
			if count == 0 {
				until = delay // not sent yet: at most a linger and a delay
				if !r.sent.IsZero() {
					until = delay - c.now.Sub(r.sent)
				}
			}
			count++
			tokens += r.tokens
		}
	}
	return count, tokens, until
}

// hold adds (sign +1) or removes (-1) a reservation from its scopes'
// outstanding figures. Call with l.mu held.
func (l *Ledger) hold(r *resv, sign int64, c clock) {
	for _, sc := range scopes(r.key, r.model) {
		w := l.win(sc, c)
		w.outCount += sign
		w.outTokens += sign * r.tokens
	}
}

func (l *Ledger) kickSend() {
	select {
	case l.kick <- struct{}{}:
	default:
	}
}
