package main

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/droverhq/drover/pkg/apikey"
)

// keysCommand manages the fleet's run-time API keys through a proxy's
// /api/keys (admin key required). The proxies keep them in a JetStream
// bucket that every replica watches, so a change is in force everywhere
// within a second.
var keysCommand = &command{
	name:    "keys",
	summary: "keys create|list|set|revoke|rotate: manage API keys fleet-wide (admin key)",
	run:     runKeys,
}

const keysUsage = `create ID [--role client|admin] [--models 'llama3*,qwen*'] [LIMITS]
       droverctl keys list [--json]   (each key's limits, what is left, tokens spent today and this month)
       droverctl keys set ID [--role R] [--models ...] [LIMITS]   (--models= clears the list)
       droverctl keys revoke ID
       droverctl keys rotate ID
       LIMITS: [--requests-per-minute N] [--tokens-per-minute N] [--concurrent N] [--tokens-per-day N]
               [--tokens-per-month N] [--model-limit 'MODEL:field=N[,field=N]']... [--weight N] [--class interactive|batch]
               (0 lifts a limit; set changes only the limits given)
       common flags: [--url URL] [--api-key ADMIN_KEY]`

// keyDoc is a key as /api/keys shows it.
type keyDoc = apikey.View

func runKeys(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs, f := newFleetFlagSet("keys", keysUsage, stderr)
	role := fs.String("role", "", "client (inference, listings, its own usage) or admin (management); create's default is client")
	models := fs.String("models", "", "comma-separated glob patterns of the only models the key may use, such as 'llama3*,qwen*'; empty allows every model")
	lf := addLimitFlags(fs)
	pos, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	set := map[string]bool{}
	fs.Visit(func(fl *flag.Flag) { set[fl.Name] = true })
	if len(pos) == 0 {
		fs.Usage()
		return errUsage
	}
	verb, rest := pos[0], pos[1:]
	wantArgs := map[string]int{"create": 1, "list": 0, "set": 1, "revoke": 1, "rotate": 1}
	n, ok := wantArgs[verb]
	if !ok || len(rest) != n {
		if !ok {
			fmt.Fprintf(stderr, "unknown keys command %q\n", verb)
		} else {
			fmt.Fprintf(stderr, "keys %s takes %d argument(s), got %d\n", verb, n, len(rest))
		}
		fs.Usage()
		return errUsage
	}
	if verb != "create" && verb != "set" {
		for _, name := range append([]string{"role", "models"}, limitFlagNames()...) {
			if set[name] {
				fmt.Fprintf(stderr, "--%s applies to create and set, not %s\n", name, verb)
				return errUsage
			}
		}
	}
	ctx, cancel := context.WithTimeout(ctx, f.timeout)
	defer cancel()
	switch verb {
	case "list":
		return listKeys(ctx, f, stdout, stderr)
	case "create":
		body := map[string]any{"id": rest[0], "models": splitModels(*models)}
		if *role != "" {
			body["role"] = *role
		}
		lf.addTo(body, set)
		var doc keyDoc
		if err := f.call(ctx, http.MethodPost, "/api/keys", body, &doc); err != nil {
			return err
		}
		return printSecret(stdout, f.json, "created", doc)
	case "set":
		body := map[string]any{}
		if set["role"] {
			body["role"] = *role
		}
		if set["models"] {
			body["models"] = splitModels(*models)
		}
		lf.addTo(body, set)
		if len(body) == 0 {
			fmt.Fprintln(stderr, "keys set: give --role, --models, limits, --weight or --class")
			return errUsage
		}
		var doc keyDoc
		if err := f.call(ctx, http.MethodPatch, "/api/keys/"+url.PathEscape(rest[0]), body, &doc); err != nil {
			return err
		}
		if f.json {
			return printJSON(stdout, doc)
		}
		fmt.Fprintf(stdout, "key %s: role %s, models %s, %s\n", doc.ID, doc.Role, modelList(doc.Models), limitsLine(doc))
		return nil
	case "revoke":
		var doc map[string]string
		if err := f.call(ctx, http.MethodDelete, "/api/keys/"+url.PathEscape(rest[0]), nil, &doc); err != nil {
			return err
		}
		if f.json {
			return printJSON(stdout, doc)
		}
		fmt.Fprintf(stdout, "revoked key %s on every replica\n", rest[0])
		return nil
	default: // rotate
		var doc keyDoc
		if err := f.call(ctx, http.MethodPost, "/api/keys/"+url.PathEscape(rest[0])+"/rotate", nil, &doc); err != nil {
			return err
		}
		return printSecret(stdout, f.json, "rotated", doc)
	}
}

// call sends body (if any) to path and decodes the JSON answer into out.
func (f *fleetFlags) call(ctx context.Context, method, path string, body, out any) error {
	resp, err := f.do(ctx, method, path, body)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return fmt.Errorf("reading Drover's answer to %s %s: %w", method, path, err)
	}
	return nil
}

// keyListEntry is a key in keys list --json: as /api/keys shows it, with
// its entry of /api/limits (what is left, what it spent).
type keyListEntry struct {
	keyDoc
	Status json.RawMessage `json:"status,omitempty"`
}

func listKeys(ctx context.Context, f *fleetFlags, stdout, stderr io.Writer) error {
	var doc struct {
		Keys []keyDoc `json:"keys"`
	}
	if err := f.call(ctx, http.MethodGet, "/api/keys", nil, &doc); err != nil {
		return err
	}
	status, err := keyStatuses(ctx, f)
	var notServed *apiError
	if errors.As(err, &notServed) && notServed.status == http.StatusNotFound {
		fmt.Fprintln(stderr, "this proxy does not serve /api/limits (an older version): what is left and what was spent are not shown")
	} else if err != nil {
		return err
	}
	if f.json {
		out := struct {
			Keys []keyListEntry `json:"keys"`
		}{Keys: []keyListEntry{}}
		for _, k := range doc.Keys {
			out.Keys = append(out.Keys, keyListEntry{keyDoc: k, Status: status[k.ID].raw})
		}
		return printJSON(stdout, out)
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	partial := "" // why the figures are not the fleet's, if they are not
	fmt.Fprintln(tw, "ID\tROLE\tMODELS\tSOURCE\tCLASS\tWEIGHT\tLIMITS\tLEFT\tTODAY\tMONTH\tCREATED\tUPDATED")
	for _, k := range doc.Keys {
		st, known := status[k.ID]
		today, month := "?", "?"
		if known {
			today, month = strconv.FormatInt(st.Spend.TokensToday, 10), strconv.FormatInt(st.Spend.TokensThisMonth, 10)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", k.ID, k.Role, modelList(k.Models), k.Source,
			cmp.Or(k.Class, apikey.ClassInteractive), strconv.Itoa(max(k.Weight, 1)), limitsText(k.Limits), leftText(k.Limits, st.Remaining),
			today, month, day(k.Created), day(k.Updated))
		for _, m := range sortedModels(k.ModelLimits) {
			fmt.Fprintf(tw, "  model %s\t\t\t\t\t\t%s\t%s\t\t\t\t\n", m, limitsText(k.ModelLimits[m]),
				leftText(k.ModelLimits[m], st.ModelRemaining[m]))
		}
		if known && !st.Fleet && partial == "" {
			partial = cmp.Or(st.Reason, "unknown")
		}
	}
	if partial != "" {
		fmt.Fprintf(stderr, "note: what is left and spent is the answering replica's view, not the whole fleet's: %s\n", partial)
	}
	return tw.Flush()
}

// keyStatuses reads every key's entry of /api/limits, by key id.
func keyStatuses(ctx context.Context, f *fleetFlags) (map[string]limitStatus, error) {
	var doc struct {
		Keys []json.RawMessage `json:"keys"`
	}
	if err := f.call(ctx, http.MethodGet, "/api/limits", nil, &doc); err != nil {
		return nil, err
	}
	out := map[string]limitStatus{}
	for _, raw := range doc.Keys {
		var st limitStatus
		if err := json.Unmarshal(raw, &st); err != nil {
			return nil, fmt.Errorf("reading /api/limits: %w", err)
		}
		st.raw = raw
		out[st.KeyID] = st
	}
	return out, nil
}

// limitsLine sums up a key's limits, weight and class in one line.
func limitsLine(k keyDoc) string {
	line := fmt.Sprintf("class %s, weight %d, limits %s", cmp.Or(k.Class, apikey.ClassInteractive), max(k.Weight, 1), limitsText(k.Limits))
	for _, m := range sortedModels(k.ModelLimits) {
		line += fmt.Sprintf(", %s: %s", m, limitsText(k.ModelLimits[m]))
	}
	return line
}

// printSecret shows a new secret, the one time it can be seen.
func printSecret(w io.Writer, asJSON bool, what string, doc keyDoc) error {
	if asJSON {
		return printJSON(w, doc)
	}
	fmt.Fprintf(w, "%s key %s (role %s, models %s, %s)\n\n", what, doc.ID, doc.Role, modelList(doc.Models), limitsLine(doc))
	fmt.Fprintf(w, "    %s\n\n", doc.Secret)
	fmt.Fprintln(w, "Store this secret now: Drover keeps only its digest and cannot show it again.")
	fmt.Fprintln(w, "Clients send it as: Authorization: Bearer <secret>")
	return nil
}

// splitModels turns 'a*, b*' into its patterns; "" is an empty list
// (every model).
func splitModels(s string) []string {
	out := []string{}
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

func modelList(m []string) string {
	if len(m) == 0 {
		return "(all)"
	}
	return strings.Join(m, ",")
}

func day(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.UTC().Format("2006-01-02 15:04")
}
