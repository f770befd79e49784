package server

import (
	"io"
	"net/http"
	"strings"
	"testing"
)

func TestMetricsExposed(t *testing.T) {
	e := newEnv(t, 1, nil, nil)
	e.srv.Fleet.InvalidateLocal() // the chat below fetches the model list
	if resp, body, err := post(t, t.Context(), e.url+"/api/chat", chatBody("tiny", true, "")); err != nil || resp.StatusCode != 200 {
		t.Fatalf("%v %s", err, body)
	}
	resp, err := http.Get(e.url + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	for _, want := range []string{
		`drover_requests_total{backend="a",model="tiny",route="/api/chat",status="200"} 1`,
		`drover_tokens_total{backend="a",direction="output",model="tiny"} 10`,
		`drover_time_to_first_byte_seconds_bucket`,
		`drover_queue_wait_seconds_bucket{outcome="immediate"`,
		`drover_lock_wait_seconds_bucket{lock="router"`,
		`drover_cache_refreshes_total{backend="a",cache="models",result="ok"}`,
		`drover_backend_breaker_state{backend="a"} 0`,
		`drover_queue_depth 0`,
	} {
		if !strings.Contains(string(body), want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
}
