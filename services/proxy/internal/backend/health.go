package backend

import (
	"sync"
	"time"
	"unicode/utf8"

	"github.com/droverhq/drover/pkg/config"
)

// State is a breaker state.
type State int

const (
	// Closed: traffic flows.
	Closed State = iota
	// Open: the backend is skipped until the open period ends.
	Open
	// HalfOpen: the open period is over and one trial may go to the
	// backend: one request (ClaimTrial, which routing calls for a
	// half-open candidate) or one probe (BeginTrial), never more at
	// once; every other request is kept away while it runs. A success
	// closes the breaker; a failure of the trial opens it again for twice
	// as long (up to open_max); a trial that ends without a verdict (its
	// client left) lets the next one through. Before that first trial a
	// failure changes nothing: the breaker is still open underneath.
	HalfOpen
)

func (s State) String() string {
	switch s {
	case Open:
		return "open"
	case HalfOpen:
		return "half-open"
	}
	return "closed"
}

// Health is a backend's breaker. Failures are what the backend did wrong:
// connect errors, timeouts, 5xx and "server busy", streams cut mid-way. A
// client that cancels is not a failure of the backend and must not be
// reported here.
type Health struct {
	threshold int
	openFor   time.Duration
	openMax   time.Duration
	now       func() time.Time

	mu          sync.Mutex // guards the fields below
	state       State
	consecutive int           // failures in a row while closed
	openUntil   time.Time     // while Open
	backoff     time.Duration // current open period
	trial       any           // who holds the half-open trial (probe, or a request's owner); nil: none
	lastErr     string
	lastChange  time.Time
	onChange    func(State)
}

// NewHealth returns a closed breaker.
func NewHealth(c config.Health) *Health {
	return &Health{threshold: c.FailureThreshold, openFor: c.OpenFor, openMax: c.OpenMax, now: time.Now, backoff: c.OpenFor}
}

// OnChange registers f to be called (outside the lock) after each state
// change; it must be set before the backend is used.
func (h *Health) OnChange(f func(State)) { h.onChange = f }

// probe is the owner of a trial begun by BeginTrial.
var probe = new(byte)

// BeginTrial marks a half-open probe as running; it returns false if the
// backend is not half-open or a trial (probe or request) is already
// running.
func (h *Health) BeginTrial() bool {
	_, fresh := h.ClaimTrial(probe)
	return fresh
}

// ClaimTrial makes owner (comparable: a request's context, say) the holder
// of the half-open trial. ok is whether owner holds it: the backend is
// half-open and no one else's trial is running. fresh is whether this call
// took it (false when owner held it already); the claimant must then
// ReleaseTrial once it is done, whether or not it reached the backend.
func (h *Health) ClaimTrial(owner any) (ok, fresh bool) {
	now := h.now()
	h.mu.Lock()
	defer h.mu.Unlock()
	switch {
	case h.stateLocked(now) != HalfOpen:
		return false, false
	case h.trial == owner:
		return true, false
	case h.trial != nil:
		return false, false
	}
	h.state = HalfOpen
	h.trial = owner
	return true, true
}

// ReleaseTrial ends owner's trial if it still holds one that had no
// verdict (Success and Failure end it themselves).
func (h *Health) ReleaseTrial(owner any) {
	h.mu.Lock()
	if h.trial == owner {
		h.trial = nil
	}
	h.mu.Unlock()
}

// Success records a good response.
func (h *Health) Success() {
	h.mu.Lock()
	changed := h.state != Closed
	h.state, h.consecutive, h.trial, h.backoff = Closed, 0, nil, h.openFor
	if changed {
		h.lastChange = h.now()
	}
	f := h.onChange
	h.mu.Unlock()
	if changed && f != nil {
		f(Closed)
	}
}

// Failure records a failure of the backend. hard failures (cannot connect)
// open the breaker at once; soft ones count towards the threshold.
func (h *Health) Failure(err error, hard bool) {
	now := h.now()
	h.mu.Lock()
	if err != nil {
		h.lastErr = trimError(err.Error())
	}
	opened := false
	switch h.state {
	case Closed:
		h.consecutive++
		if hard || h.consecutive >= h.threshold {
			h.openLocked(now)
			opened = true
		}
	case HalfOpen:
		// Half-open and failed again: open for longer.
		h.backoff = min(h.backoff*2, h.openMax)
		h.openLocked(now)
		opened = true
	case Open:
	}
	f := h.onChange
	h.mu.Unlock()
	if opened && f != nil {
		f(Open)
	}
}

func (h *Health) openLocked(now time.Time) {
	h.state, h.trial, h.consecutive = Open, nil, 0
	h.openUntil = now.Add(h.backoff)
	h.lastChange = now
}

// EndTrial clears a half-open probe that ended without a verdict.
func (h *Health) EndTrial() { h.ReleaseTrial(probe) }

// Snapshot is Health as reported by /health.
type Snapshot struct {
	State       string    `json:"state"`
	Healthy     bool      `json:"healthy"`
	Consecutive int       `json:"consecutive_failures"`
	LastError   string    `json:"last_error,omitempty"`
	OpenUntil   time.Time `json:"open_until,omitzero"`
	Since       time.Time `json:"since,omitzero"`
}

// Snapshot reads the current state.
func (h *Health) Snapshot() Snapshot {
	now := h.now()
	h.mu.Lock()
	defer h.mu.Unlock()
	st := h.stateLocked(now)
	s := Snapshot{State: st.String(), Healthy: st == Closed, Consecutive: h.consecutive, LastError: h.lastErr, Since: h.lastChange}
	if st == Open {
		s.OpenUntil = h.openUntil
	}
	return s
}

// State returns the current state.
func (h *Health) State() State {
	now := h.now()
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.stateLocked(now)
}

// stateLocked returns the state as of now: an open breaker whose period is
// over is half-open (the field itself moves there at BeginTrial).
func (h *Health) stateLocked(now time.Time) State {
	if h.state == Open && !now.Before(h.openUntil) {
		return HalfOpen
	}
	return h.state
}

// maxLastError bounds the last error kept for /health: enough to say what
// went wrong, not a backend's whole error page.
const maxLastError = 512

func trimError(s string) string {
	if len(s) <= maxLastError {
		return s
	}
	cut := maxLastError
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + "… (trimmed)"
}
