package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
)

var cacheCommand = &command{
	name:    "cache",
	summary: "cache invalidate: drop cached model lists (every replica, over NATS)",
	run:     runCache,
}

func runCache(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs, f := newFleetFlagSet("cache", "invalidate [--backend NAME[,NAME...]] [--url URL] [--json]", stderr)
	backends := fs.String("backend", "", "comma-separated backend names (see droverctl status); default every backend")
	pos, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 || pos[0] != "invalidate" {
		fs.Usage()
		return errUsage
	}
	var body any
	if *backends != "" {
		var names []string
		for _, b := range strings.Split(*backends, ",") {
			if b = strings.TrimSpace(b); b != "" {
				names = append(names, b)
			}
		}
		body = map[string][]string{"backends": names}
	}
	ctx, cancel := context.WithTimeout(ctx, f.timeout)
	defer cancel()
	resp, err := f.do(ctx, http.MethodPost, "/api/cache/invalidate", body)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	var doc struct {
		Invalidated []string `json:"invalidated"`
	}
	if err := json.Unmarshal(raw, &doc); err != nil {
		return fmt.Errorf("reading Drover's answer: %w", err)
	}
	if f.json {
		if doc.Invalidated == nil {
			doc.Invalidated = []string{}
		}
		return printJSON(stdout, map[string]any{"invalidated": doc.Invalidated, "all": body == nil})
	}
	if body == nil {
		fmt.Fprintln(stdout, "invalidated the cached model lists of every backend")
	} else {
		fmt.Fprintf(stdout, "invalidated %s\n", strings.Join(doc.Invalidated, ", "))
	}
	return nil
}
