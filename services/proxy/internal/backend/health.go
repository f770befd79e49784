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
	// HalfOpen: the open period is over. Requests may go to the backend
	// again, any number at once (routing prefers closed backends that have
	// the model), and the prober tries it, one probe at a time
	// (BeginTrial). A success, of a request or a probe, closes the
	// breaker; a failure once the prober has begun a trial opens it again
	// for twice as long (up to open_max). Before that first trial a
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
	trial       bool          // a half-open probe is in flight
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

// BeginTrial marks a half-open probe as running; it returns false if the
// backend is not half-open or a probe is already running. Requests are not
// trials: they need no BeginTrial and are not limited by one.
func (h *Health) BeginTrial() bool {
	now := h.now()
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.stateLocked(now) != HalfOpen || h.trial {
		return false
	}
	h.state = HalfOpen
	h.trial = true
	return true
}

// Success records a good response.
func (h *Health) Success() {
	h.mu.Lock()
	changed := h.state != Closed
	h.state, h.consecutive, h.trial, h.backoff = Closed, 0, false, h.openFor
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
	h.state, h.trial, h.consecutive = Open, false, 0
	h.openUntil = now.Add(h.backoff)
	h.lastChange = now
}

// EndTrial clears a half-open probe that ended without a verdict.
func (h *Health) EndTrial() {
	h.mu.Lock()
	h.trial = false
	h.mu.Unlock()
}

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
