package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
)

var pullCommand = &command{
	name:    "pull",
	summary: "pull a model onto every backend at once, with progress bars",
	run:     runPull,
}

// progress is one line of Ollama's (and Drover's merged) pull stream.
type progress struct {
	Status    string `json:"status"`
	Digest    string `json:"digest,omitempty"`
	Total     int64  `json:"total,omitempty"`
	Completed int64  `json:"completed,omitempty"`
	Error     string `json:"error,omitempty"`
}

func runPull(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs, f := newFleetFlagSet("pull", "MODEL [--insecure] [--url URL] [--json]", stderr)
	insecure := fs.Bool("insecure", false, "allow an insecure registry")
	pos, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		fs.Usage()
		return errUsage
	}
	model := pos[0]
	body := map[string]any{"model": model, "stream": true}
	if *insecure {
		body["insecure"] = true
	}
	// No timeout: a pull takes as long as the bytes do. Ctrl-C ends it.
	resp, err := f.do(ctx, http.MethodPost, "/api/pull", body)
	if err != nil {
		return err
	}
	defer resp.Body.Close()

	var view progressView
	switch {
	case f.json:
		view = &jsonView{w: stdout}
	case isTerminal(stdout):
		view = &barView{w: stdout}
	default:
		view = &lineView{w: stdout}
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	var last progress
	for sc.Scan() {
		line := sc.Bytes()
		if len(strings.TrimSpace(string(line))) == 0 {
			continue
		}
		var p progress
		if err := json.Unmarshal(line, &p); err != nil {
			return fmt.Errorf("reading the pull stream: %w", err)
		}
		view.update(p, line)
		last = p
		if p.Error != "" {
			view.done()
			return fmt.Errorf("pulling %s: %s", model, p.Error)
		}
	}
	view.done()
	if err := sc.Err(); err != nil {
		return fmt.Errorf("pull stream cut: %w", err)
	}
	if last.Status != "success" {
		return errors.New("the pull stream ended without success")
	}
	if !f.json {
		fmt.Fprintf(stdout, "pulled %s on every backend\n", model)
	}
	return nil
}

type progressView interface {
	update(p progress, raw []byte)
	done()
}

// jsonView passes the NDJSON stream through for scripts.
type jsonView struct{ w io.Writer }

func (v *jsonView) update(_ progress, raw []byte) { fmt.Fprintf(v.w, "%s\n", raw) }
func (v *jsonView) done()                         {}

// lineView prints each status once and each layer once finished, for logs
// and pipes. (The fleet's statuses interleave: every backend says "pulling
// manifest".)
type lineView struct {
	w        io.Writer
	seen     map[string]bool
	finished map[string]bool
}

func (v *lineView) update(p progress, _ []byte) {
	if v.finished == nil {
		v.finished, v.seen = map[string]bool{}, map[string]bool{}
	}
	if p.Digest == "" {
		if !v.seen[p.Status] && p.Status != "success" {
			fmt.Fprintln(v.w, p.Status)
		}
		v.seen[p.Status] = true
		return
	}
	if p.Total > 0 && p.Completed >= p.Total && !v.finished[p.Digest] {
		v.finished[p.Digest] = true
		fmt.Fprintf(v.w, "%s  %s\n", p.Status, humanBytes(p.Total))
	}
}

func (v *lineView) done() {}

// barView redraws one progress bar per layer in place. Layer totals grow
// as more backends report (Drover sums bytes per digest across the fleet).
type barView struct {
	w      io.Writer
	rows   []string            // row keys in first-seen order
	layers map[string]progress // digest -> latest
	drawn  int
}

func (v *barView) update(p progress, _ []byte) {
	if v.layers == nil {
		v.layers = map[string]progress{}
	}
	key := p.Digest
	if key == "" {
		if p.Status == "success" {
			return
		}
		key = "status:" + p.Status
	}
	if _, ok := v.layers[key]; !ok {
		v.rows = append(v.rows, key)
	}
	v.layers[key] = p
	v.redraw()
}

func (v *barView) redraw() {
	var b strings.Builder
	if v.drawn > 0 {
		fmt.Fprintf(&b, "\x1b[%dA", v.drawn) // back to the first row
	}
	for _, k := range v.rows {
		b.WriteString("\x1b[2K")
		b.WriteString(renderRow(v.layers[k]))
		b.WriteString("\n")
	}
	v.drawn = len(v.rows)
	io.WriteString(v.w, b.String()) //nolint:errcheck
}

func (v *barView) done() {}

const barWidth = 30

func renderRow(p progress) string {
	if p.Digest == "" || p.Total <= 0 {
		return p.Status
	}
	frac := float64(p.Completed) / float64(p.Total)
	frac = min(max(frac, 0), 1)
	fill := int(frac * barWidth)
	bar := strings.Repeat("█", fill) + strings.Repeat("░", barWidth-fill)
	return fmt.Sprintf("%-22s %s %3.0f%%  %s/%s", p.Status, bar, frac*100, humanBytes(p.Completed), humanBytes(p.Total))
}

// humanBytes formats like the ollama CLI (decimal units).
func humanBytes(n int64) string {
	const unit = 1000
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %cB", float64(n)/float64(div), "KMGTPE"[exp])
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}
