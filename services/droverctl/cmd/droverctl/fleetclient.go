package main

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/droverhq/drover/pkg/config"
)

// The fleet commands (status, cache, pull) talk to a Drover proxy, or the
// load balancer in front of the replicas, over its HTTP API; they need no
// configuration file or ClickHouse.

// fleetFlags are the flags of every fleet command.
type fleetFlags struct {
	url     string
	apiKey  string
	timeout time.Duration
	json    bool
}

// defaultURL follows the ollama CLI: OLLAMA_HOST, if set, names the server
// (clients point it at Drover), else Drover's default port on this machine.
func defaultURL() string {
	if h := os.Getenv("OLLAMA_HOST"); h != "" {
		return h
	}
	return "http://127.0.0.1:" + config.DefaultPort
}

func newFleetFlagSet(name, usage string, stderr io.Writer) (*flag.FlagSet, *fleetFlags) {
	fs := commandFlagSet(name, usage, stderr)
	f := &fleetFlags{}
	fs.StringVar(&f.url, "url", defaultURL(), "Drover's address (a proxy replica or the load balancer); default $OLLAMA_HOST or http://127.0.0.1:"+config.DefaultPort)
	fs.StringVar(&f.apiKey, "api-key", os.Getenv("DROVERCTL_API_KEY"), "client API key when Drover requires one (default $DROVERCTL_API_KEY)")
	fs.DurationVar(&f.timeout, "timeout", 10*time.Second, "how long to wait for each answer")
	fs.BoolVar(&f.json, "json", false, "print JSON for scripts")
	return fs, f
}

// parseArgs parses flags wherever they appear among the arguments and
// returns the positional ones.
func parseArgs(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			if err == flag.ErrHelp {
				return nil, err
			}
			return nil, errUsage
		}
		if fs.NArg() == 0 {
			return pos, nil
		}
		pos = append(pos, fs.Arg(0))
		args = fs.Args()[1:]
	}
}

// base turns what the user typed (host:port, :port, or a URL) into a URL.
func (f *fleetFlags) base() string {
	u := strings.TrimRight(f.url, "/")
	if !strings.Contains(u, "://") {
		if strings.HasPrefix(u, ":") {
			u = "127.0.0.1" + u
		}
		u = "http://" + u
	}
	return u
}

// apiError is an answer other than 2xx, with Drover's (Ollama's) message.
type apiError struct {
	path   string
	status int
	msg    string
}

func (e *apiError) Error() string {
	return fmt.Sprintf("%s: %d %s", e.path, e.status, e.msg)
}

func errorMessage(body []byte) string {
	var doc struct {
		Error any `json:"error"`
	}
	if json.Unmarshal(body, &doc) == nil && doc.Error != nil {
		if m, ok := doc.Error.(map[string]any); ok { // OpenAI's shape
			return fmt.Sprint(m["message"])
		}
		return fmt.Sprint(doc.Error)
	}
	return strings.TrimSpace(string(body))
}

// do sends one request. The response body is the caller's to close; a
// non-2xx answer is an *apiError unless accept lists its status.
func (f *fleetFlags) do(ctx context.Context, method, path string, body any, accept ...int) (*http.Response, error) {
	var rd io.Reader
	if body != nil {
		raw, err := json.Marshal(body)
		if err != nil {
			return nil, err
		}
		rd = bytes.NewReader(raw)
	}
	req, err := http.NewRequestWithContext(ctx, method, f.base()+path, rd)
	if err != nil {
		return nil, err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if f.apiKey != "" {
		req.Header.Set("Authorization", "Bearer "+f.apiKey)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode/100 != 2 {
		for _, code := range accept {
			if resp.StatusCode == code {
				return resp, nil
			}
		}
		raw, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
		resp.Body.Close()
		return nil, &apiError{path: path, status: resp.StatusCode, msg: errorMessage(raw)}
	}
	return resp, nil
}

// getJSON fetches path within the timeout and returns the raw body.
func (f *fleetFlags) getJSON(ctx context.Context, path string, accept ...int) (json.RawMessage, int, error) {
	ctx, cancel := context.WithTimeout(ctx, f.timeout)
	defer cancel()
	resp, err := f.do(ctx, http.MethodGet, path, nil, accept...)
	if err != nil {
		return nil, 0, err
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, 0, fmt.Errorf("%s: %w", path, err)
	}
	if !json.Valid(raw) {
		return nil, 0, fmt.Errorf("%s: answer is not JSON: %.80q", path, raw)
	}
	return raw, resp.StatusCode, nil
}

func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}
