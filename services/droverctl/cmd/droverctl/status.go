package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/droverhq/drover/pkg/usage"
)

var statusCommand = &command{
	name:    "status",
	summary: "fleet health, models and where they are loaded, in-flight requests",
	run:     runStatus,
}

// What status reads from /health, /api/ps_details and /api/usage.
type healthDoc struct {
	Status   string `json:"status"`
	Replica  string `json:"replica"`
	Queue    int    `json:"queue_length"`
	Backends []struct {
		Name           string `json:"name"`
		URL            string `json:"url"`
		Type           string `json:"type"`
		MaxConcurrency int    `json:"max_concurrency"`
		Health         struct {
			State       string `json:"state"`
			Healthy     bool   `json:"healthy"`
			Consecutive int    `json:"consecutive_failures"`
			LastError   string `json:"last_error"`
		} `json:"health"`
	} `json:"backends"`
	FleetSync struct {
		Mode   string   `json:"mode"`
		Peers  []string `json:"peers"`
		Reason string   `json:"reason"`
	} `json:"fleet_sync"`
}

type loadedDoc struct {
	Models []struct {
		Name      string    `json:"name"`
		Endpoint  string    `json:"endpoint"`
		ExpiresAt time.Time `json:"expires_at"`
		SizeVRAM  int64     `json:"size_vram"`
	} `json:"models"`
}

type usageDoc struct {
	InFlightBy map[string]map[string]int         `json:"usage_counts"`
	Totals     map[string]map[string]usage.Count `json:"totals"`
	InFlight   int                               `json:"in_flight"`
	Queue      int                               `json:"queue_length"`
	Tokens     struct {
		Mode   string `json:"mode"`
		Reason string `json:"reason"`
	} `json:"token_source"`
}

func runStatus(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs, f := newFleetFlagSet("status", "[--url URL] [--json]", stderr)
	if err := parse(fs, args); err != nil {
		return err
	}
	// /health answers 503 with its body when no backend is usable.
	healthRaw, code, err := f.getJSON(ctx, "/health", http.StatusServiceUnavailable)
	if err != nil {
		return err
	}
	loadedRaw, _, err := f.getJSON(ctx, "/api/ps_details")
	if err != nil {
		return err
	}
	usageRaw, _, err := f.getJSON(ctx, "/api/usage")
	if err != nil {
		return err
	}
	var h healthDoc
	var l loadedDoc
	var u usageDoc
	for _, d := range []struct {
		raw []byte
		v   any
	}{{healthRaw, &h}, {loadedRaw, &l}, {usageRaw, &u}} {
		if err := json.Unmarshal(d.raw, d.v); err != nil {
			return fmt.Errorf("reading Drover's answer: %w", err)
		}
	}
	if f.json {
		if err := printJSON(stdout, map[string]json.RawMessage{"health": healthRaw, "loaded": loadedRaw, "usage": usageRaw}); err != nil {
			return err
		}
	} else {
		writeStatus(stdout, f.base(), h, l, u)
	}
	if code == http.StatusServiceUnavailable || h.Status == "unavailable" {
		return errors.New("no backend is usable")
	}
	return nil
}

func writeStatus(w io.Writer, url string, h healthDoc, l loadedDoc, u usageDoc) {
	sync := h.FleetSync.Mode
	switch {
	case h.FleetSync.Mode == "fleet":
		sync = fmt.Sprintf("fleet (%d other replicas)", len(h.FleetSync.Peers))
	case h.FleetSync.Reason != "":
		sync += " (" + h.FleetSync.Reason + ")"
	}
	fmt.Fprintf(w, "Drover %s: %s   (answered by %s)\n", url, strings.ToUpper(h.Status), h.Replica)
	fmt.Fprintf(w, "in flight %d, queued %d, fleet sync: %s\n\n", u.InFlight, u.Queue, sync)

	loaded := map[string][]string{}
	for _, m := range l.Models {
		loaded[m.Endpoint] = append(loaded[m.Endpoint], m.Name)
	}
	inflight := func(ep string) int {
		n := 0
		for _, c := range u.InFlightBy[ep] {
			n += c
		}
		return n
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "BACKEND\tSTATE\tHEALTHY\tIN FLIGHT\tCAP/MODEL\tLOADED\tLAST ERROR")
	for _, b := range h.Backends {
		healthy := "yes"
		if !b.Health.Healthy {
			healthy = fmt.Sprintf("no (%d failures)", b.Health.Consecutive)
		}
		models := loaded[b.Name]
		sort.Strings(models)
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%d\t%s\t%s\n", b.Name, b.Health.State, healthy, inflight(b.Name),
			b.MaxConcurrency, orDash(strings.Join(models, ", ")), orDash(b.Health.LastError))
	}
	tw.Flush()

	type row struct {
		model, endpoint string
		inflight        int
		c               usage.Count
	}
	// Totals are keyed by the name clients asked for ("tiny"), in-flight
	// counts by the backend's ("tiny:latest"): one row for both.
	byKey := map[[2]string]*row{}
	for ep, models := range u.Totals {
		for m, c := range models {
			byKey[[2]string{ep, strings.TrimSuffix(m, ":latest")}] = &row{model: m, endpoint: ep, c: c}
		}
	}
	for ep, models := range u.InFlightBy {
		for m, n := range models {
			k := [2]string{ep, strings.TrimSuffix(m, ":latest")}
			if r, ok := byKey[k]; ok {
				r.inflight += n
			} else if n > 0 {
				byKey[k] = &row{model: m, endpoint: ep, inflight: n}
			}
		}
	}
	var rows []row
	for _, r := range byKey {
		rows = append(rows, *r)
	}
	fmt.Fprintln(w)
	if len(rows) == 0 {
		fmt.Fprintln(w, "no requests yet")
		return
	}
	sort.Slice(rows, func(i, j int) bool {
		if rows[i].model != rows[j].model {
			return rows[i].model < rows[j].model
		}
		return rows[i].endpoint < rows[j].endpoint
	})
	tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "MODEL\tBACKEND\tIN FLIGHT\tREQUESTS\tERRORS\tINPUT TOKENS\tOUTPUT TOKENS")
	for _, r := range rows {
		fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%d\t%d\t%d\n", r.model, r.endpoint, r.inflight, r.c.Requests, r.c.Errors, r.c.InputTokens, r.c.OutputTokens)
	}
	tw.Flush()
	if u.Tokens.Mode != "" {
		src := u.Tokens.Mode
		if u.Tokens.Reason != "" {
			src += ": " + u.Tokens.Reason
		}
		fmt.Fprintf(w, "(token totals: %s)\n", src)
	}
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
