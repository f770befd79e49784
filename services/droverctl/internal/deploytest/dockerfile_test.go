package deploytest

import (
	"debug/elf"
	"fmt"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"
)

// dockerfiles lists every Dockerfile in the repository's services.
func dockerfiles(t *testing.T, root string) []string {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(root, "services", "*", "Dockerfile"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no services/*/Dockerfile: %v", err)
	}
	return files
}

type instruction struct {
	cmd  string // upper case: FROM, RUN, COPY, ...
	args string
	line int
}

type stage struct {
	from, name string
	instrs     []instruction
}

func (s stage) all(cmd string) []instruction {
	var out []instruction
	for _, in := range s.instrs {
		if in.cmd == cmd {
			out = append(out, in)
		}
	}
	return out
}

// parseDockerfile splits a Dockerfile into stages, joining continued lines,
// dropping comments and substituting the ARGs declared before the first
// FROM (their defaults) in FROM lines.
func parseDockerfile(text string) (stages []stage, err error) {
	args := map[string]string{}
	var cur strings.Builder
	start := 0
	var instrs []instruction
	for i, line := range strings.Split(text, "\n") {
		trimmed := strings.TrimSpace(line)
		if strings.HasPrefix(trimmed, "#") || (trimmed == "" && cur.Len() == 0) {
			continue
		}
		if cur.Len() == 0 {
			start = i + 1
		}
		if strings.HasSuffix(trimmed, "\\") {
			cur.WriteString(strings.TrimSuffix(trimmed, "\\") + " ")
			continue
		}
		cur.WriteString(trimmed)
		cmd, rest, _ := strings.Cut(strings.TrimSpace(cur.String()), " ")
		instrs = append(instrs, instruction{cmd: strings.ToUpper(cmd), args: strings.TrimSpace(rest), line: start})
		cur.Reset()
	}
	for _, in := range instrs {
		switch {
		case in.cmd == "ARG" && len(stages) == 0:
			k, v, _ := strings.Cut(in.args, "=")
			args[k] = v
		case in.cmd == "FROM":
			from := os.Expand(in.args, func(k string) string { return args[k] })
			f := strings.Fields(from)
			st := stage{from: f[0]}
			if len(f) == 3 && strings.EqualFold(f[1], "AS") {
				st.name = f[2]
			}
			stages = append(stages, st)
		case len(stages) == 0:
			return nil, fmt.Errorf("line %d: %s before FROM", in.line, in.cmd)
		default:
			stages[len(stages)-1].instrs = append(stages[len(stages)-1].instrs, in)
		}
	}
	if len(stages) == 0 {
		return nil, fmt.Errorf("no FROM")
	}
	return stages, nil
}

// shellWords splits a command line the way sh would for the simple forms
// used in RUN lines: quotes and backslashes, no expansions.
func shellWords(s string) ([]string, error) {
	var words []string
	var w strings.Builder
	inWord := false
	var quote rune
	for i := 0; i < len(s); i++ {
		c := rune(s[i])
		switch {
		case quote != 0:
			if c == quote {
				quote = 0
			} else {
				w.WriteRune(c)
			}
		case c == '\'' || c == '"':
			quote, inWord = c, true
		case c == '\\' && i+1 < len(s):
			i++
			w.WriteByte(s[i])
			inWord = true
		case c == ' ' || c == '\t':
			if inWord {
				words = append(words, w.String())
				w.Reset()
				inWord = false
			}
		default:
			w.WriteRune(c)
			inWord = true
		}
	}
	if quote != 0 {
		return nil, fmt.Errorf("unterminated quote in %q", s)
	}
	if inWord {
		words = append(words, w.String())
	}
	return words, nil
}

// goBuild is one `go build` command found in a RUN line.
type goBuild struct {
	env      []string // assignments before `go`
	flags    []string // build flags, -o and its value removed
	out      string   // the -o value
	packages []string
}

var cmdSeparator = regexp.MustCompile(`&&|;|\|\|`)

func findGoBuilds(run string) ([]goBuild, error) {
	var builds []goBuild
	for _, seg := range cmdSeparator.Split(run, -1) {
		words, err := shellWords(seg)
		if err != nil {
			return nil, err
		}
		// RUN's own flags (--mount=...) come first.
		for len(words) > 0 && strings.HasPrefix(words[0], "--") {
			words = words[1:]
		}
		var b goBuild
		for len(words) > 0 && strings.Contains(words[0], "=") && !strings.HasPrefix(words[0], "-") {
			b.env = append(b.env, words[0])
			words = words[1:]
		}
		if len(words) < 2 || words[0] != "go" || words[1] != "build" {
			continue
		}
		rest := words[2:]
		for i := 0; i < len(rest); i++ {
			w := rest[i]
			switch {
			case w == "-o" && i+1 < len(rest):
				b.out = rest[i+1]
				i++
			case strings.HasPrefix(w, "-o="):
				b.out = strings.TrimPrefix(w, "-o=")
			case strings.HasPrefix(w, "-"):
				b.flags = append(b.flags, w)
			default:
				b.packages = append(b.packages, w)
			}
		}
		builds = append(builds, b)
	}
	return builds, nil
}

// binaries maps where the final image holds each built binary to its name.
func binaryNames(b goBuild) []string {
	var names []string
	for _, p := range b.packages {
		names = append(names, path.Base(p))
	}
	return names
}

var jsonArray = regexp.MustCompile(`^\[\s*"([^"]+)"`)

// TestDockerfiles checks each Dockerfile's shape and runs its Go build
// commands exactly as written (flags, packages, CGO_ENABLED=0) against this
// checkout, so that a Dockerfile that would not build fails here.
func TestDockerfiles(t *testing.T) {
	root := repoRoot(t)
	goVersion := regexp.MustCompile(`(?m)^go (\d+\.\d+)`).FindStringSubmatch(readFile(t, filepath.Join(root, "go.work")))
	if goVersion == nil {
		t.Fatal("go.work has no go line")
	}
	for _, file := range dockerfiles(t, root) {
		rel, _ := filepath.Rel(root, file)
		t.Run(rel, func(t *testing.T) {
			text := readFile(t, file)
			if !strings.HasPrefix(text, "# syntax=docker/dockerfile:1") {
				t.Error("first line must be # syntax=docker/dockerfile:1 (RUN --mount needs it)")
			}
			stages, err := parseDockerfile(text)
			if err != nil {
				t.Fatal(err)
			}
			if len(stages) < 2 {
				t.Fatalf("%d stage(s): want a build stage and a small run stage", len(stages))
			}
			names := map[string]bool{}
			built := map[string]string{} // binary name -> directory it was built into
			for _, st := range stages[:len(stages)-1] {
				names[st.name] = true
				if !strings.HasPrefix(st.from, "golang:") {
					continue
				}
				if tag := strings.TrimPrefix(st.from, "golang:"); !strings.HasPrefix(tag, goVersion[1]) {
					t.Errorf("build stage FROM %s: go.work wants Go %s", st.from, goVersion[1])
				}
				// The build runs in the copied repository root.
				wd := st.all("WORKDIR")
				if len(wd) == 0 || !slices.ContainsFunc(st.all("COPY"), func(in instruction) bool { return in.args == ". ." }) {
					t.Errorf("stage %s: want WORKDIR and COPY . . (the go.work workspace)", st.name)
				}
				for _, run := range st.all("RUN") {
					builds, err := findGoBuilds(run.args)
					if err != nil {
						t.Fatalf("line %d: %v", run.line, err)
					}
					for _, b := range builds {
						if !slices.Contains(b.env, "CGO_ENABLED=0") {
							t.Errorf("line %d: go build without CGO_ENABLED=0: the run image has no libc", run.line)
						}
						for _, n := range runGoBuild(t, root, b, run.line) {
							built[n] = strings.TrimSuffix(b.out, "/")
						}
					}
				}
			}
			if len(built) == 0 {
				t.Fatal("no go build in any build stage")
			}

			final := stages[len(stages)-1]
			if !strings.HasPrefix(final.from, "gcr.io/distroless/static") && final.from != "scratch" {
				t.Errorf("run stage FROM %s: want distroless/static or scratch", final.from)
			}
			users := final.all("USER")
			if len(users) == 0 {
				t.Error("run stage has no USER: it would run as root")
			} else if u := strings.Split(users[len(users)-1].args, ":")[0]; u == "root" || u == "0" {
				t.Errorf("run stage USER %s: want non-root", u)
			}
			// Where each binary lands in the image.
			inImage := map[string]bool{}
			for _, cp := range final.all("COPY") {
				f := strings.Fields(cp.args)
				var from string
				var paths []string
				for _, w := range f {
					if v, ok := strings.CutPrefix(w, "--from="); ok {
						from = v
					} else if !strings.HasPrefix(w, "--") {
						paths = append(paths, w)
					}
				}
				if from == "" {
					continue
				}
				if !names[from] {
					t.Errorf("line %d: COPY --from=%s: no such stage", cp.line, from)
				}
				src, dst := strings.TrimSuffix(paths[0], "/"), paths[len(paths)-1]
				for n, dir := range built {
					if src == dir {
						inImage[path.Join(dst, n)] = true
					}
				}
			}
			for _, cmd := range []string{"ENTRYPOINT", "HEALTHCHECK"} {
				for _, in := range final.all(cmd) {
					args := in.args
					if cmd == "HEALTHCHECK" {
						_, args, _ = strings.Cut(args, "CMD ")
					}
					m := jsonArray.FindStringSubmatch(strings.TrimSpace(args))
					if m == nil {
						t.Errorf("line %d: %s must use the JSON form (the image has no shell)", in.line, cmd)
						continue
					}
					if !inImage[m[1]] {
						t.Errorf("line %d: %s runs %s, which no build stage put there (built: %v)", in.line, cmd, m[1], inImage)
					}
				}
			}
			if len(final.all("ENTRYPOINT")) == 0 {
				t.Error("no ENTRYPOINT")
			}
		})
	}
}

// runGoBuild runs one go build from a Dockerfile in the repository root,
// output into a temporary directory, and checks the binaries are static.
func runGoBuild(t *testing.T, root string, b goBuild, line int) []string {
	t.Helper()
	if len(b.packages) == 0 || b.out == "" {
		t.Fatalf("line %d: go build needs packages and -o DIR/", line)
	}
	if !strings.HasSuffix(b.out, "/") && len(b.packages) > 1 {
		t.Fatalf("line %d: -o %s with several packages must be a directory (end in /)", line, b.out)
	}
	out := t.TempDir()
	args := append([]string{"build"}, b.flags...)
	args = append(append(args, "-o", out+"/"), b.packages...)
	cmd := exec.Command("go", args...)
	cmd.Dir = root
	cmd.Env = append(os.Environ(), b.env...)
	start := time.Now()
	if msg, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("line %d: go %s (env %v) failed: %v\n%s", line, strings.Join(args, " "), b.env, err, msg)
	}
	t.Logf("line %d: go %s: %v", line, strings.Join(args, " "), time.Since(start).Round(time.Millisecond))
	names := binaryNames(b)
	for _, n := range names {
		f, err := elf.Open(filepath.Join(out, n))
		if err != nil {
			t.Fatalf("line %d: binary %s: %v", line, n, err)
		}
		for _, p := range f.Progs {
			if p.Type == elf.PT_INTERP {
				t.Errorf("line %d: %s is dynamically linked: it will not run on distroless/static", line, n)
			}
		}
		f.Close()
	}
	return names
}

func TestShellWords(t *testing.T) {
	got, err := shellWords(`CGO_ENABLED=0 go build -ldflags="-s -w" -o /out/ 'a b' c\ d`)
	want := []string{"CGO_ENABLED=0", "go", "build", "-ldflags=-s -w", "-o", "/out/", "a b", "c d"}
	if err != nil || !slices.Equal(got, want) {
		t.Errorf("got %q, %v", got, err)
	}
	if _, err := shellWords(`go build "x`); err == nil {
		t.Error("unterminated quote: want an error")
	}
}
