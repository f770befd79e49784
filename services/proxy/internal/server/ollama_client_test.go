package server

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"testing"

	"github.com/ollama/ollama/api"

	"github.com/droverhq/drover/testkit/ollamatest"
)

func ctx(t *testing.T) context.Context { return t.Context() }

func TestOllamaClientChatAndGenerate(t *testing.T) {
	e := newEnv(t, 2, nil, nil)
	msgs := []api.Message{{Role: "user", Content: "hello there friend"}}
	for _, stream := range []bool{true, false} {
		var chunks int
		var final api.ChatResponse
		err := e.client.Chat(ctx(t), &api.ChatRequest{Model: "tiny", Messages: msgs, Stream: &stream}, func(r api.ChatResponse) error {
			chunks++
			final = r
			return nil
		})
		if err != nil {
			t.Fatalf("chat stream=%v: %v", stream, err)
		}
		if !final.Done || final.PromptEvalCount != 3+ollamatest.PerMessageTokens || final.EvalCount != ollamatest.DefaultChunks {
			t.Fatalf("chat stream=%v final %+v", stream, final.Metrics)
		}
		if want := 1; !stream && chunks != want {
			t.Fatalf("non-stream chat gave %d responses", chunks)
		}
		if stream && chunks != ollamatest.DefaultChunks+1 {
			t.Fatalf("stream chat gave %d chunks", chunks)
		}

		var text strings.Builder
		var gfinal api.GenerateResponse
		err = e.client.Generate(ctx(t), &api.GenerateRequest{Model: "tiny2", Prompt: "one two", Stream: &stream, Options: map[string]any{"num_predict": 5}}, func(r api.GenerateResponse) error {
			text.WriteString(r.Response)
			gfinal = r
			return nil
		})
		if err != nil {
			t.Fatalf("generate stream=%v: %v", stream, err)
		}
		if gfinal.EvalCount != 5 || gfinal.DoneReason != "length" || text.String() != ollamatest.ReplyText(5) {
			t.Fatalf("generate: %q %+v", text.String(), gfinal)
		}
	}
	// Tokens recorded equal what the backends reported.
	var in, out int64
	for _, f := range e.fakes {
		c := f.Counters()
		in += c.PromptEvalCount
		out += c.EvalCount
	}
	var gotIn, gotOut int64
	for _, models := range e.srv.Totals.Snapshot() {
		for _, c := range models {
			gotIn += c.InputTokens
			gotOut += c.OutputTokens
		}
	}
	if in != gotIn || out != gotOut || in == 0 {
		t.Fatalf("tokens: drover %d/%d, backends %d/%d", gotIn, gotOut, in, out)
	}
}

func TestOllamaClientListPsShow(t *testing.T) {
	e := newEnv(t, 2, func(i int, c *ollamatest.Config) {
		if i == 1 {
			c.Models = append(ollamatest.DefaultModels(), ollamatest.Model{Name: "only-on-b"})
			c.Loaded = []string{"tiny"}
		}
	}, nil)
	list, err := e.client.List(ctx(t))
	if err != nil {
		t.Fatal(err)
	}
	names := map[string]bool{}
	for _, m := range list.Models {
		if names[m.Name] {
			t.Fatalf("%s listed twice", m.Name)
		}
		names[m.Name] = true
	}
	if !names["only-on-b:latest"] || !names["tiny:latest"] || len(list.Models) != len(ollamatest.DefaultModels())+1 {
		t.Fatalf("merged list: %v", names)
	}
	// Where each model lives is an extra field.
	resp, err := http.Get(e.url + "/api/tags")
	if err != nil {
		t.Fatal(err)
	}
	var raw struct {
		Models []struct {
			Name      string   `json:"name"`
			Endpoints []string `json:"endpoints"`
		} `json:"models"`
	}
	json.NewDecoder(resp.Body).Decode(&raw)
	resp.Body.Close()
	for _, m := range raw.Models {
		want := 2
		if m.Name == "only-on-b:latest" {
			want = 1
		}
		if len(m.Endpoints) != want {
			t.Fatalf("%s endpoints %v", m.Name, m.Endpoints)
		}
	}

	ps, err := e.client.ListRunning(ctx(t))
	if err != nil {
		t.Fatal(err)
	}
	if len(ps.Models) != 1 || ps.Models[0].Name != "tiny:latest" {
		t.Fatalf("ps: %+v", ps.Models)
	}
	show, err := e.client.Show(ctx(t), &api.ShowRequest{Model: "only-on-b"})
	if err != nil || show.Details.Family == "" {
		t.Fatalf("show: %+v %v", show, err)
	}
	_, err = e.client.Show(ctx(t), &api.ShowRequest{Model: "nope"})
	var se api.StatusError
	if !errors.As(err, &se) || se.StatusCode != http.StatusNotFound {
		t.Fatalf("show unknown: %v", err)
	}
}

func TestOllamaClientUnknownModel(t *testing.T) {
	e := newEnv(t, 2, nil, nil)
	err := e.client.Chat(ctx(t), &api.ChatRequest{Model: "missing", Messages: []api.Message{{Role: "user", Content: "x"}}}, func(api.ChatResponse) error { return nil })
	var se api.StatusError
	if !errors.As(err, &se) || se.StatusCode != http.StatusNotFound || se.ErrorMessage != "model 'missing' not found" {
		t.Fatalf("got %#v", err)
	}
}

func TestOllamaClientEmbed(t *testing.T) {
	e := newEnv(t, 2, nil, nil)
	res, err := e.client.Embed(ctx(t), &api.EmbedRequest{Model: "tiny-embed", Input: []string{"a b", "c d e", "f"}})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Embeddings) != 3 || res.PromptEvalCount != 6+3*ollamatest.PerMessageTokens {
		t.Fatalf("embed: %d vectors, %d tokens", len(res.Embeddings), res.PromptEvalCount)
	}
	old, err := e.client.Embeddings(ctx(t), &api.EmbeddingRequest{Model: "tiny-embed", Prompt: "hello"})
	if err != nil || len(old.Embedding) == 0 {
		t.Fatalf("embeddings: %v", err)
	}
}

func TestOllamaClientPullWithProgress(t *testing.T) {
	e := newEnv(t, 3, nil, nil)
	var statuses []string
	var sawBytes bool
	err := e.client.Pull(ctx(t), &api.PullRequest{Model: "newmodel"}, func(p api.ProgressResponse) error {
		statuses = append(statuses, p.Status)
		if p.Total > 0 && p.Completed > 0 {
			sawBytes = true
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if statuses[len(statuses)-1] != "success" || !sawBytes {
		t.Fatalf("progress: %v", statuses)
	}
	for _, f := range e.fakes {
		found := false
		for _, m := range f.Models() {
			found = found || m == "newmodel:latest"
		}
		if !found {
			t.Fatal("pull did not reach every backend")
		}
	}
	// The cache was invalidated: the new model routes at once.
	err = e.client.Chat(ctx(t), &api.ChatRequest{Model: "newmodel", Messages: []api.Message{{Role: "user", Content: "x"}}}, func(api.ChatResponse) error { return nil })
	if err != nil {
		t.Fatalf("chat after pull: %v", err)
	}
	// Copy then delete across the fleet.
	if err := e.client.Copy(ctx(t), &api.CopyRequest{Source: "newmodel", Destination: "copied"}); err != nil {
		t.Fatal(err)
	}
	if err := e.client.Delete(ctx(t), &api.DeleteRequest{Model: "copied"}); err != nil {
		t.Fatal(err)
	}
	err = e.client.Delete(ctx(t), &api.DeleteRequest{Model: "copied"})
	var se api.StatusError
	if !errors.As(err, &se) || se.StatusCode != http.StatusNotFound {
		t.Fatalf("second delete: %v", err)
	}
}

func TestOllamaClientDeadBackend(t *testing.T) {
	e := newEnv(t, 2, nil, nil)
	if _, err := e.client.List(ctx(t)); err != nil { // warm the caches
		t.Fatal(err)
	}
	e.fakes[0].Down()
	for range 10 {
		err := e.client.Chat(ctx(t), &api.ChatRequest{Model: "tiny", Messages: []api.Message{{Role: "user", Content: "x"}}}, func(api.ChatResponse) error { return nil })
		if err != nil {
			t.Fatalf("chat with one backend down: %v", err)
		}
	}
	if e.fakes[1].Counters().Completed != 10 {
		t.Fatalf("live backend served %d", e.fakes[1].Counters().Completed)
	}
	resp, err := http.Get(e.url + "/health")
	if err != nil {
		t.Fatal(err)
	}
	var h struct {
		Status   string
		Backends []struct {
			Name   string
			Health struct{ State string }
		}
	}
	json.NewDecoder(resp.Body).Decode(&h)
	resp.Body.Close()
	if resp.StatusCode != 200 || h.Status != "degraded" || h.Backends[0].Health.State == "closed" {
		t.Fatalf("health %d %+v", resp.StatusCode, h)
	}
	e.fakes[1].Down()
	// A request on a pooled connection to a server that just died fails
	// with a reset, which counts towards the threshold; a fresh dial is
	// refused, which opens the breaker at once. Either way, within the
	// threshold every backend is known to be down.
	for range e.srv.Config.Health.FailureThreshold {
		err = e.client.Chat(ctx(t), &api.ChatRequest{Model: "tiny", Messages: []api.Message{{Role: "user", Content: "x"}}}, func(api.ChatResponse) error { return nil })
		if err == nil {
			t.Fatal("chat with every backend down succeeded")
		}
	}
	resp, _ = http.Get(e.url + "/health")
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("health with all down: %d", resp.StatusCode)
	}
	// Both come back; the probes notice.
	e.fakes[0].Up()
	e.fakes[1].Up()
	waitFor(t, func() bool {
		resp, err := http.Get(e.url + "/health")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == 200
	})
}
