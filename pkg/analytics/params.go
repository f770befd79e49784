package analytics

import (
	"fmt"
	"strconv"
	"strings"
	"time"
)

// ParseTime reads an instant as RFC 3339 (or a date, 2006-01-02, UTC) or as
// a duration back from now: "90s", "15m", "24h", "7d".
func ParseTime(s string, now time.Time) (time.Time, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return time.Time{}, nil
	}
	if t, err := time.Parse(time.RFC3339, s); err == nil {
		return t.UTC(), nil
	}
	if t, err := time.Parse("2006-01-02", s); err == nil {
		return t.UTC(), nil
	}
	d, err := ParseDuration(s)
	if err != nil {
		return time.Time{}, fmt.Errorf("%q: want RFC 3339 time, a date or a duration like 24h or 7d", s)
	}
	return now.Add(-d).UTC(), nil
}

// ParseDuration is time.ParseDuration plus whole days ("7d").
func ParseDuration(s string) (time.Duration, error) {
	if days, ok := strings.CutSuffix(s, "d"); ok {
		n, err := strconv.Atoi(days)
		if err != nil || n < 0 {
			return 0, fmt.Errorf("invalid duration %q", s)
		}
		return time.Duration(n) * 24 * time.Hour, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil || d < 0 {
		return 0, fmt.Errorf("invalid duration %q", s)
	}
	return d, nil
}

// ParseBucket reads a bucket width: a whole number of minutes from 1m to 31d
// ("1m", "5m", "1h", "1d"; also "minute", "hour", "day").
func ParseBucket(s string) (time.Duration, error) {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "minute":
		return time.Minute, nil
	case "hour":
		return time.Hour, nil
	case "day":
		return 24 * time.Hour, nil
	}
	d, err := ParseDuration(s)
	if err != nil || d < time.Minute || d%time.Minute != 0 || d > 31*24*time.Hour {
		return 0, fmt.Errorf("bucket %q: want a whole number of minutes between 1m and 31d, e.g. 1m, 1h, 1d", s)
	}
	return d, nil
}

// AutoBucket picks a bucket that gives a readable series over [since, until):
// minutes up to 3 hours, hours up to 3 days, days beyond.
func AutoBucket(since, until time.Time) time.Duration {
	if since.IsZero() {
		return 24 * time.Hour
	}
	switch span := until.Sub(since); {
	case span <= 3*time.Hour:
		return time.Minute
	case span <= 72*time.Hour:
		return time.Hour
	}
	return 24 * time.Hour
}
