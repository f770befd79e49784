package apikey

import "time"

// Status is one key's limits, what is left of each and what it spent, as
// GET /api/limits, droverctl keys list and the dashboard show it (the
// proxy's limits.Ledger computes it).
type Status struct {
	KeyID       string            `json:"key_id"`
	Limits      Limits            `json:"limits"`
	ModelLimits map[string]Limits `json:"model_limits,omitempty"`
	// Remaining is what is left under Limits now (nil fields: unlimited).
	Remaining Remaining `json:"remaining"`
	// ModelRemaining is what is left under each ModelLimits entry.
	ModelRemaining map[string]Remaining `json:"model_remaining,omitempty"`
	// Spend is what the key used, fleet-wide, in each window.
	Spend Spend `json:"spend"`
	// Resets says when each window starts again.
	Resets Resets `json:"resets"`
	// Fleet is true when the figures are the fleet's (reservations shared
	// over NATS, day and month from ClickHouse and the usage stream);
	// Reason says what is missing when they are not.
	Fleet  bool   `json:"fleet"`
	Reason string `json:"reason,omitempty"`
}

// Remaining is what is left of each limit; nil means unlimited.
type Remaining struct {
	RequestsThisMinute *int64 `json:"requests_this_minute,omitempty"`
	TokensThisMinute   *int64 `json:"tokens_this_minute,omitempty"`
	Concurrent         *int64 `json:"concurrent,omitempty"`
	TokensToday        *int64 `json:"tokens_today,omitempty"`
	TokensThisMonth    *int64 `json:"tokens_this_month,omitempty"`
}

// Spend is a key's use, fleet-wide: settled counts plus what is reserved
// by requests still running (Reserved is part of each token figure).
type Spend struct {
	RequestsThisMinute int64 `json:"requests_this_minute"`
	TokensThisMinute   int64 `json:"tokens_this_minute"`
	InFlight           int64 `json:"in_flight"`
	TokensToday        int64 `json:"tokens_today"`
	TokensThisMonth    int64 `json:"tokens_this_month"`
	Reserved           int64 `json:"reserved_tokens"`
}

// Resets are the starts of the next minute, UTC day and UTC month.
type Resets struct {
	Minute time.Time `json:"minute"`
	Day    time.Time `json:"day"`
	Month  time.Time `json:"month"`
}
