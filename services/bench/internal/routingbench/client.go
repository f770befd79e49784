package routingbench

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"time"
)

// Sample is one request's outcome.
type Sample struct {
	Sent     time.Duration // since the run started
	Finished time.Duration
	TTFT     time.Duration // to the first content chunk
	// PromptTokens and UncachedTokens are the backend's prompt_eval_count
	// and the tokens it evaluated, prompt_eval_duration / the token cost.
	PromptTokens, UncachedTokens int64
	Err                          string // "" when the reply was complete
	Reply                        string // the assistant's content, for the next turn
}

// Client sends streamed /api/chat requests and reads what the fake's
// final chunk says about the prompt cache.
type Client struct {
	HTTP *http.Client
	// TokenCost is the backends' prompt cost per uncached token.
	TokenCost time.Duration
}

type chatBody struct {
	Model    string         `json:"model"`
	Messages []Message      `json:"messages"`
	Stream   bool           `json:"stream"`
	Options  map[string]int `json:"options"`
}

type chatChunk struct {
	Message struct {
		Content string `json:"content"`
	} `json:"message"`
	Done               bool   `json:"done"`
	PromptEvalCount    int64  `json:"prompt_eval_count"`
	PromptEvalDuration int64  `json:"prompt_eval_duration"`
	Error              string `json:"error"`
}

// Chat sends msgs to baseURL/api/chat with X-Session-Id: session, timing
// from start (the run's start).
func (c Client) Chat(ctx context.Context, baseURL, model, session string, msgs []Message, replyTokens int, start time.Time) Sample {
	s := Sample{Sent: time.Since(start)}
	done := func(err string) Sample {
		s.Finished, s.Err = time.Since(start), err
		return s
	}
	body, err := json.Marshal(chatBody{Model: model, Messages: msgs, Stream: true, Options: map[string]int{"num_predict": replyTokens}})
	if err != nil {
		return done("encode: " + err.Error())
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, baseURL+"/api/chat", bytes.NewReader(body))
	if err != nil {
		return done("request: " + err.Error())
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("X-Session-Id", session)
	resp, err := c.HTTP.Do(req)
	if err != nil {
		return done("transport: " + shortErr(err))
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return done(fmt.Sprintf("status %d", resp.StatusCode))
	}
	var reply strings.Builder
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 0, 4096), 1<<20)
	for sc.Scan() {
		var ch chatChunk
		if err := json.Unmarshal(sc.Bytes(), &ch); err != nil {
			return done("decode chunk: " + err.Error())
		}
		if ch.Error != "" {
			return done("stream error: " + ch.Error)
		}
		if s.TTFT == 0 && (ch.Message.Content != "" || ch.Done) {
			s.TTFT = time.Since(start) - s.Sent
		}
		reply.WriteString(ch.Message.Content)
		if ch.Done {
			s.PromptTokens = ch.PromptEvalCount
			s.UncachedTokens = s.PromptTokens
			if c.TokenCost > 0 {
				s.UncachedTokens = min(int64((time.Duration(ch.PromptEvalDuration)+c.TokenCost/2)/c.TokenCost), s.PromptTokens)
			}
			s.Reply = reply.String()
			return done("")
		}
	}
	if err := sc.Err(); err != nil {
		return done("read: " + shortErr(err))
	}
	return done("stream ended without done")
}

func shortErr(err error) string {
	msg := err.Error()
	for _, k := range []string{"connection refused", "connection reset", "deadline exceeded", "Client.Timeout", "context canceled", "EOF"} {
		if strings.Contains(msg, k) {
			return k
		}
	}
	if len(msg) > 80 {
		msg = msg[:80]
	}
	return msg
}
