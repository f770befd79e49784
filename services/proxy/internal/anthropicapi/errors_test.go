package anthropicapi

import (
	"encoding/json"
	"net/http/httptest"
	"strings"
	"testing"
)

// Each status gets the type Anthropic's API documents for it (and Ollama's
// anthropic.NewError gives it), and the shape Anthropic's SDKs decode.
func TestWriteError(t *testing.T) {
	for status, typ := range map[int]string{
		400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
		404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error",
		500: "api_error", 501: "api_error", 502: "api_error", 503: "overloaded_error", 529: "overloaded_error",
	} {
		w := httptest.NewRecorder()
		WriteError(w, status, "what happened")
		var e struct {
			Type  string `json:"type"`
			Error struct {
				Type    string `json:"type"`
				Message string `json:"message"`
			} `json:"error"`
			RequestID string `json:"request_id"`
		}
		body := w.Body.String()
		if err := json.Unmarshal([]byte(body), &e); err != nil || w.Code != status || e.Type != "error" || e.Error.Type != typ ||
			e.Error.Message != "what happened" || len(e.RequestID) != len("req_")+24 || !strings.HasSuffix(body, "}\n") ||
			w.Header().Get("Content-Type") != "application/json" {
			t.Errorf("%d: %d %q %s", status, w.Code, w.Header().Get("Content-Type"), body)
		}
	}
}
