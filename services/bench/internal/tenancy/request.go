// Package tenancy measures what issue 14 promises of a fleet of drover-proxy
// replicas sharing one NATS: how far a token budget is overshot under
// concurrent bursts (admission "reserve" beside the naive "count"), how
// fairly a saturated fleet shares its slots between keys (Jain's index,
// shares against weights, the light key's queue wait), and whether a batch
// flood delays interactive traffic. Everything is measured from the client
// side, against real processes (see Fleet); docs/limits-bench.md has the
// method.
package tenancy

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

// Request is the shape of one chat request: a prompt of Words words and a
// fixed output of Output tokens. The fake backend counts a message as its
// words + 4 tokens and answers exactly num_predict tokens, so a request is
// worth Tokens() tokens whatever replica or backend serves it.
type Request struct {
	Model  string
	Words  int
	Output int
	// Batch sends X-Drover-Priority: batch (a request may lower its
	// class, never raise it).
	Batch bool
}

// perMessageTokens is what the fake backend adds to a message's words
// (testkit/ollamatest: PerMessageTokens).
const perMessageTokens = 4

// Tokens is what the request costs: prompt plus output.
func (r Request) Tokens() int64 { return int64(r.Words + perMessageTokens + r.Output) }

// words are what prompts are made of: three letters and a space, four
// bytes a word, so the proxy's estimate of a prompt (bytes / 4) is about
// the fake backend's count (a token a word), as it is about a real
// tokenizer's for English text.
var words = []string{"the", "cat", "sat", "and", "ran", "far", "but", "not", "too", "few"}

func (r Request) body() []byte {
	var b strings.Builder
	for i := range r.Words {
		if i > 0 {
			b.WriteByte(' ')
		}
		b.WriteString(words[i%len(words)])
	}
	prompt := b.String()
	body, _ := json.Marshal(map[string]any{
		"model":    r.Model,
		"stream":   true,
		"messages": []map[string]string{{"role": "user", "content": prompt}},
		"options":  map[string]any{"num_predict": r.Output},
	})
	return body
}

// Result is one request as the client saw it.
type Result struct {
	Key     string
	Start   time.Time
	Headers time.Duration // until the response headers (the first flushed chunk)
	Total   time.Duration // until the whole body was read
	Status  int           // 0 when the request failed before a response
	Err     string        // transport or protocol failure, "" if none
	Prompt  int64         // prompt_eval_count of the final chunk
	Output  int64         // eval_count of the final chunk
	// Cut is a request the end of a closed-loop run cancelled: it counts
	// as outstanding until then, and as neither reply nor failure.
	Cut bool
	// Replica is the index of the replica the request went to.
	Replica int
}

// OK reports a complete 200 reply with its counts.
func (r Result) OK() bool { return r.Status == http.StatusOK && r.Err == "" }

// End is when the reply was fully read.
func (r Result) End() time.Time { return r.Start.Add(r.Total) }

// Client sends Requests to replicas with a key.
type Client struct {
	HTTP *http.Client
}

// Do sends req to the replica at base with key (its secret; id names it in
// the Result) and reads the whole stream.
func (c Client) Do(ctx context.Context, base, id, key string, req Request) Result {
	res := Result{Key: id, Start: time.Now()}
	hr, err := http.NewRequestWithContext(ctx, http.MethodPost, base+"/api/chat", bytes.NewReader(req.body()))
	if err != nil {
		res.Err = err.Error()
		return res
	}
	hr.Header.Set("Content-Type", "application/json")
	hr.Header.Set("Authorization", "Bearer "+key)
	if req.Batch {
		hr.Header.Set("X-Drover-Priority", "batch")
	}
	resp, err := c.HTTP.Do(hr)
	if err != nil {
		res.Err = "transport: " + shortErr(err)
		res.Total = time.Since(res.Start)
		return res
	}
	defer resp.Body.Close()
	res.Headers = time.Since(res.Start)
	res.Status = resp.StatusCode
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	var last []byte
	for sc.Scan() {
		last = append(last[:0], sc.Bytes()...)
	}
	res.Total = time.Since(res.Start)
	if err := sc.Err(); err != nil {
		res.Err = "read: " + shortErr(err)
		return res
	}
	if resp.StatusCode != http.StatusOK {
		return res
	}
	var final struct {
		Done   bool   `json:"done"`
		Error  string `json:"error"`
		Prompt int64  `json:"prompt_eval_count"`
		Output int64  `json:"eval_count"`
	}
	if err := json.Unmarshal(last, &final); err != nil {
		res.Err = "final chunk: " + shortErr(err)
		return res
	}
	switch {
	case final.Error != "":
		res.Err = "stream error: " + final.Error
	case !final.Done:
		res.Err = "stream ended before done"
	}
	res.Prompt, res.Output = final.Prompt, final.Output
	return res
}

func shortErr(err error) string {
	msg := err.Error()
	if len(msg) > 100 {
		msg = msg[:100]
	}
	return msg
}

// errorSummary counts failures by kind ("status 503", "transport: ...").
func errorSummary(rs []Result) map[string]int {
	m := map[string]int{}
	for _, r := range rs {
		switch {
		case r.Cut:
		case r.Err != "":
			m[r.Err]++
		case r.Status != http.StatusOK:
			m[fmt.Sprintf("status %d", r.Status)]++
		}
	}
	return m
}
