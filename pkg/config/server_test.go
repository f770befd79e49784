package config

import (
	"strings"
	"testing"
	"time"
)

// The server section's limits are set from the file or the environment, and
// a wrong one is refused under its key.
func TestServerLimits(t *testing.T) {
	c, err := Load(write(t, "server: {max_body_bytes: 1048576, idle_timeout: 5s}"), []string{"DROVER_SERVER_BODY_TIMEOUT=7s", "DROVER_SERVER_MAX_EVENT_BYTES=4096"})
	if err != nil {
		t.Fatal(err)
	}
	want := DefaultServer()
	want.MaxBodyBytes, want.IdleTimeout, want.BodyTimeout, want.MaxEventBytes = 1<<20, 5*time.Second, 7*time.Second, 4096
	if c.Server != want {
		t.Fatalf("server %+v, want %+v", c.Server, want)
	}
	for _, tt := range []struct{ yaml, want string }{
		{"server: {max_body_bytes: -1}", "server.max_body_bytes: must be at least 1024 bytes"},
		{"server: {max_header_bytes: 10}", "server.max_header_bytes: must be at least 1024 bytes"},
		{"server: {body_timeout: -1s}", "server.body_timeout: must be positive"},
		{"server: {max_event_bytes: 5}", "server.max_event_bytes"},
	} {
		if _, err := Load(write(t, tt.yaml), nil); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: got %v, want %q", tt.yaml, err, tt.want)
		}
	}
}
