package conformance

import (
	"net/http"
	"net/url"
	"reflect"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"

	"github.com/ollama/ollama/api"
)

// TestOllamaGoClient: the official client gets the same results through
// Drover as from one server.
func TestOllamaGoClient(t *testing.T) {
	need(t)
	d := newDrover(t, nil)
	u, _ := url.Parse(srvA.url)
	direct := api.NewClient(u, &http.Client{})
	ctx := t.Context()
	for name, c := range map[string]*api.Client{"direct": direct, "drover": d.client} {
		if err := c.Heartbeat(ctx); err != nil {
			t.Fatalf("%s heartbeat: %v", name, err)
		}
	}

	vd, err1 := direct.Version(ctx)
	vv, err2 := d.client.Version(ctx)
	if err1 != nil || err2 != nil || vd != vv {
		t.Fatalf("version: %q %v directly, %q %v through Drover", vd, err1, vv, err2)
	}

	names := func(c *api.Client) []string {
		l, err := c.List(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, m := range l.Models {
			out = append(out, m.Name)
		}
		sort.Strings(out)
		return out
	}
	if a, b := names(direct), names(d.client); !reflect.DeepEqual(a, b) {
		t.Fatalf("list: %v directly, %v through Drover", a, b)
	}

	sd, err1 := direct.Show(ctx, &api.ShowRequest{Model: "tiny2"})
	sv, err2 := d.client.Show(ctx, &api.ShowRequest{Model: "tiny2"})
	if err1 != nil || err2 != nil {
		t.Fatalf("show: %v / %v", err1, err2)
	}
	if !reflect.DeepEqual(sd.Capabilities, sv.Capabilities) || sd.Template != sv.Template || sd.Details.Family != sv.Details.Family {
		t.Fatalf("show: %+v directly, %+v through Drover", sd.Details, sv.Details)
	}

	// Chat and generate with a seed: the same reply, streamed or not.
	for _, stream := range []bool{true, false} {
		chat := func(c *api.Client) (string, api.Metrics) {
			var text strings.Builder
			var last api.ChatResponse
			err := c.Chat(ctx, &api.ChatRequest{Model: "tiny", Messages: []api.Message{{Role: "user", Content: "hello"}}, Stream: &stream,
				Options: map[string]any{"seed": 11, "num_predict": 15}}, func(r api.ChatResponse) error {
				text.WriteString(r.Message.Content)
				last = r
				return nil
			})
			if err != nil || !last.Done {
				t.Fatalf("chat stream=%v: %v (done %v)", stream, err, last.Done)
			}
			return text.String(), last.Metrics
		}
		td, md := chat(direct)
		tv, mv := chat(d.client)
		if td != tv || md.PromptEvalCount != mv.PromptEvalCount || md.EvalCount != mv.EvalCount {
			t.Fatalf("chat stream=%v: %q %d/%d directly, %q %d/%d through Drover", stream, td, md.PromptEvalCount, md.EvalCount, tv, mv.PromptEvalCount, mv.EvalCount)
		}
		gen := func(c *api.Client) string {
			var text strings.Builder
			err := c.Generate(ctx, &api.GenerateRequest{Model: "tiny-fixed", Prompt: "hi", Stream: &stream, Options: map[string]any{"seed": 2, "num_predict": 9}},
				func(r api.GenerateResponse) error { text.WriteString(r.Response); return nil })
			if err != nil {
				t.Fatalf("generate stream=%v: %v", stream, err)
			}
			return text.String()
		}
		if a, b := gen(direct), gen(d.client); a != b {
			t.Fatalf("generate stream=%v: %q directly, %q through Drover", stream, a, b)
		}
	}

	ed, err1 := direct.Embed(ctx, &api.EmbedRequest{Model: "tiny-embed", Input: []string{"a", "b c"}})
	ev, err2 := d.client.Embed(ctx, &api.EmbedRequest{Model: "tiny-embed", Input: []string{"a", "b c"}})
	if err1 != nil || err2 != nil || len(ed.Embeddings) != 2 || len(ev.Embeddings) != 2 || len(ev.Embeddings[0]) != len(ed.Embeddings[0]) || ed.PromptEvalCount != ev.PromptEvalCount {
		t.Fatalf("embed: %v / %v", err1, err2)
	}
	if _, err := d.client.Embeddings(ctx, &api.EmbeddingRequest{Model: "tiny-embed", Prompt: "a"}); err != nil {
		t.Fatalf("embeddings: %v", err)
	}

	// Errors come back as the same typed errors.
	_, errD := direct.Show(ctx, &api.ShowRequest{Model: "nope"})
	_, errV := d.client.Show(ctx, &api.ShowRequest{Model: "nope"})
	if errD == nil || errV == nil || errD.Error() != errV.Error() {
		t.Fatalf("show unknown: %v directly, %v through Drover", errD, errV)
	}
	errD = direct.Chat(ctx, &api.ChatRequest{Model: "tiny", Messages: []api.Message{{Role: "user", Content: "x"}}, Tools: api.Tools{{Type: "function", Function: api.ToolFunction{Name: "f"}}}}, func(api.ChatResponse) error { return nil })
	errV = d.client.Chat(ctx, &api.ChatRequest{Model: "tiny", Messages: []api.Message{{Role: "user", Content: "x"}}, Tools: api.Tools{{Type: "function", Function: api.ToolFunction{Name: "f"}}}}, func(api.ChatResponse) error { return nil })
	if errD == nil || errV == nil || errD.Error() != errV.Error() {
		t.Fatalf("tools refused: %v directly, %v through Drover", errD, errV)
	}

	// Copy, create and delete reach every server that should have them.
	if err := d.client.Copy(ctx, &api.CopyRequest{Source: "tiny", Destination: "client-copy"}); err != nil {
		t.Fatalf("copy: %v", err)
	}
	if err := d.client.Create(ctx, &api.CreateRequest{Model: "client-made", From: "tiny-fixed", System: "x"}, func(api.ProgressResponse) error { return nil }); err != nil {
		t.Fatalf("create: %v", err)
	}
	for _, o := range []*ollama{srvA, srvB} {
		l := names(api.NewClient(mustURL(o.url), &http.Client{}))
		if !slices.Contains(l, "client-copy:latest") || !slices.Contains(l, "client-made:latest") {
			t.Fatalf("server %s after copy and create through Drover: %v", o.name, l)
		}
	}
	if !slices.Contains(names(d.client), "client-made:latest") {
		t.Fatal("Drover's list misses the model it just created")
	}
	for _, m := range []string{"client-copy", "client-made"} {
		if err := d.client.Delete(ctx, &api.DeleteRequest{Model: m}); err != nil {
			t.Fatalf("delete %s: %v", m, err)
		}
	}
	for _, o := range []*ollama{srvA, srvB} {
		if l := names(api.NewClient(mustURL(o.url), &http.Client{})); slices.Contains(l, "client-copy:latest") || slices.Contains(l, "client-made:latest") {
			t.Fatalf("server %s after delete through Drover: %v", o.name, l)
		}
	}
	errD = direct.Delete(ctx, &api.DeleteRequest{Model: "client-copy"})
	errV = d.client.Delete(ctx, &api.DeleteRequest{Model: "client-copy"})
	if errD == nil || errV == nil || errD.Error() != errV.Error() {
		t.Fatalf("delete again: %v directly, %v through Drover", errD, errV)
	}

	if _, err := d.client.ListRunning(ctx); err != nil {
		t.Fatalf("ps: %v", err)
	}
}

func mustURL(s string) *url.URL {
	u, err := url.Parse(s)
	if err != nil {
		panic(err)
	}
	return u
}

// TestOllamaCLI: the ollama command, pointed at Drover, does what it does
// against one server.
func TestOllamaCLI(t *testing.T) {
	need(t)
	d := newDrover(t, nil)
	both := func(args ...string) (direct, via string) {
		t.Helper()
		a, err := runCLI(srvA.host, "", args...)
		if err != nil {
			t.Fatalf("ollama %v directly: %v\n%s", args, err, a)
		}
		b, err := runCLI(d.host, "", args...)
		if err != nil {
			t.Fatalf("ollama %v through Drover: %v\n%s", args, err, b)
		}
		return a, b
	}

	a, b := both("--version")
	if a != b {
		t.Fatalf("--version: %q directly, %q through Drover", a, b)
	}
	a, b = both("list")
	if col(a, 0) != col(b, 0) || firstLine(a) != firstLine(b) {
		t.Fatalf("list:\n%s\ndirectly, through Drover:\n%s", a, b)
	}
	a, b = both("show", "tiny")
	if normPaths(a) != normPaths(b) {
		t.Fatalf("show:\n%s\ndirectly, through Drover:\n%s", a, b)
	}
	a, b = both("show", "--modelfile", "tiny-fixed")
	if sortedLines(normPaths(a)) != sortedLines(normPaths(b)) {
		t.Fatalf("show --modelfile:\n%s\ndirectly, through Drover:\n%s", a, b)
	}
	a, b = both("run", "tiny-fixed", "hi")
	if strings.TrimSpace(a) == "" || strings.TrimSpace(b) == "" {
		t.Fatalf("run: %q directly, %q through Drover", a, b)
	}
	a, b = both("run", "--verbose", "tiny-fixed", "hi")
	for _, out := range []string{a, b} {
		if !regexp.MustCompile(`eval count:\s+32 token`).MatchString(out) {
			t.Fatalf("run --verbose: no eval count of 32 in\n%s", out)
		}
	}
	a, b = both("ps")
	if firstLine(a) != firstLine(b) || !strings.Contains(b, "tiny-fixed:latest") {
		t.Fatalf("ps:\n%s\ndirectly, through Drover:\n%s", a, b)
	}

	// cp and rm through Drover act on every server that has the model.
	if out, err := runCLI(d.host, "", "cp", "tiny", "cli-copy"); err != nil {
		t.Fatalf("cp: %v\n%s", err, out)
	}
	for _, o := range []*ollama{srvA, srvB} {
		if out, _ := o.cli("", "list"); !strings.Contains(out, "cli-copy:latest") {
			t.Fatalf("%s after cp through Drover:\n%s", o.name, out)
		}
	}
	if out, err := runCLI(d.host, "", "run", "cli-copy", "hi"); err != nil {
		t.Fatalf("run the copy: %v\n%s", err, out)
	}
	if out, err := runCLI(d.host, "", "rm", "cli-copy"); err != nil || !strings.Contains(out, "deleted 'cli-copy'") {
		t.Fatalf("rm: %v\n%s", err, out)
	}
	for _, o := range []*ollama{srvA, srvB} {
		if out, _ := o.cli("", "list"); strings.Contains(out, "cli-copy") {
			t.Fatalf("%s after rm through Drover:\n%s", o.name, out)
		}
	}
	// Errors read the same.
	ea, errA := runCLI(srvA.host, "", "rm", "cli-copy")
	eb, errB := runCLI(d.host, "", "rm", "cli-copy")
	if errA == nil || errB == nil || ea != eb {
		t.Fatalf("rm again: %q directly, %q through Drover", ea, eb)
	}
	ea, errA = runCLI(srvA.host, "", "show", "nope")
	eb, errB = runCLI(d.host, "", "show", "nope")
	if errA == nil || errB == nil || ea != eb {
		t.Fatalf("show unknown: %q directly, %q through Drover", ea, eb)
	}
}

func firstLine(s string) string { l, _, _ := strings.Cut(s, "\n"); return l }

// col returns the sorted first column of a table, header excluded.
func col(s string, i int) string {
	var out []string
	for _, l := range strings.Split(strings.TrimSpace(s), "\n")[1:] {
		if f := strings.Fields(l); len(f) > i {
			out = append(out, f[i])
		}
	}
	sort.Strings(out)
	return strings.Join(out, " ")
}

func sortedLines(s string) string {
	ls := strings.Split(s, "\n")
	sort.Strings(ls)
	return strings.Join(ls, "\n")
}
