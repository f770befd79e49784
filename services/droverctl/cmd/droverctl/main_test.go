package main

import (
	"bytes"
	"context"
	"encoding/csv"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/droverhq/drover/pkg/chstore"
	"github.com/droverhq/drover/pkg/usage"
	"github.com/droverhq/drover/testkit/chtest"
)

func droverctl(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var out, errOut bytes.Buffer
	code := run(context.Background(), args, &out, &errOut)
	return code, out.String(), errOut.String()
}

func TestMigrateAndUsage(t *testing.T) {
	srv := chtest.Start(t)
	t.Setenv("DROVER_CLICKHOUSE_ADDR", srv.Addr())

	code, out, errOut := droverctl(t, "migrate")
	if code != 0 || !strings.Contains(out, "applied 0001_") {
		t.Fatalf("migrate: %d %q %q", code, out, errOut)
	}
	code, out, _ = droverctl(t, "migrate")
	if code != 0 || !strings.Contains(out, "up to date") {
		t.Fatalf("second migrate: %d %q", code, out)
	}

	store, err := chstore.Open(chstore.Options{Addr: srv.Addr()})
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	now := time.Now().UTC()
	var rows []chstore.EventRow
	for i, m := range []string{"llama3.2:3b", "llama3.2:3b", "qwen2.5:7b"} {
		ev := usage.Event{Schema: usage.SchemaVersion, ID: usage.NewID(), Time: now.Add(-time.Duration(i) * time.Minute),
			Endpoint: "gpu-a", Model: m, APIKey: "team-a", Route: []string{"/api/chat", "/v1/messages", "/v1/messages"}[i], Status: 200,
			InputTokens: usage.Int64(10), OutputTokens: usage.Int64(int64(i))}
		rows = append(rows, chstore.EventRow{Event: ev, Seq: uint64(i + 1)})
	}
	if err := store.InsertEvents(context.Background(), rows); err != nil {
		t.Fatal(err)
	}

	code, out, errOut = droverctl(t, "usage")
	if code != 0 || !strings.Contains(out, "llama3.2:3b") || !strings.Contains(out, "TOTAL") || !strings.Contains(out, "33") {
		t.Fatalf("table: %d\n%s%s", code, out, errOut)
	}

	code, out, errOut = droverctl(t, "usage", "--group-by", "model", "--json")
	if code != 0 {
		t.Fatalf("json: %d %s", code, errOut)
	}
	var got []chstore.UsageRow
	if err := json.Unmarshal([]byte(out), &got); err != nil {
		t.Fatalf("json: %v\n%s", err, out)
	}
	if len(got) != 2 || got[0].Model != "llama3.2:3b" || got[0].TotalTokens != 21 || got[1].TotalTokens != 12 {
		t.Fatalf("json rows %+v", got)
	}

	code, out, errOut = droverctl(t, "usage", "--group-by", "key,endpoint", "--bucket", "1d", "--since", "7d", "--csv")
	if code != 0 {
		t.Fatalf("csv: %d %s", code, errOut)
	}
	records, err := csv.NewReader(strings.NewReader(out)).ReadAll()
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(records[0], ",") != "bucket,api_key,endpoint,requests,errors,input_tokens,output_tokens,total_tokens" {
		t.Fatalf("csv header %v", records[0])
	}
	var total int
	for _, r := range records[1:] {
		if r[1] != "team-a" || r[2] != "gpu-a" {
			t.Fatalf("csv row %v", r)
		}
		n := 0
		for _, c := range r[7] {
			n = n*10 + int(c-'0')
		}
		total += n
	}
	if total != 33 {
		t.Fatalf("csv totals %d, want 33\n%s", total, out)
	}

	// The events carry no api: it is derived from their route.
	code, out, errOut = droverctl(t, "usage", "--group-by", "api", "--csv")
	if code != 0 {
		t.Fatalf("by api: %d %s", code, errOut)
	}
	if want := "api,requests,errors,input_tokens,output_tokens,total_tokens\nanthropic,2,0,20,3,23\nollama,1,0,10,0,10\n"; out != want {
		t.Fatalf("usage --group-by api:\n%s\nwant\n%s", out, want)
	}
	code, out, errOut = droverctl(t, "usage", "--group-by", "", "--api", "ollama", "--json")
	if code != 0 || !strings.Contains(out, `"total_tokens": 10,`) {
		t.Fatalf("usage --api ollama: %d\n%s%s", code, out, errOut)
	}

	// --key-id filters by key id; --key is its deprecated name.
	code, out, errOut = droverctl(t, "usage", "--group-by", "key", "--key-id", "team-a", "--csv")
	if want := "api_key,requests,errors,input_tokens,output_tokens,total_tokens\nteam-a,3,0,30,3,33\n"; code != 0 || out != want || errOut != "" {
		t.Fatalf("usage --key-id team-a: %d\n%s%s\nwant\n%s", code, out, errOut, want)
	}
	code, out, errOut = droverctl(t, "usage", "--group-by", "key", "--key-id", "team-b", "--csv")
	if code != 0 || out != "api_key,requests,errors,input_tokens,output_tokens,total_tokens\n" {
		t.Fatalf("usage --key-id team-b: %d\n%s%s", code, out, errOut)
	}
	code, out, errOut = droverctl(t, "usage", "--group-by", "key", "--key", "team-a", "--csv")
	if code != 0 || !strings.Contains(out, "team-a,3,0,30,3,33") || !strings.Contains(errOut, "--key is deprecated, use --key-id") {
		t.Fatalf("usage --key team-a: %d\n%s%s", code, out, errOut)
	}
}

func TestBadArguments(t *testing.T) {
	t.Setenv("DROVER_CLICKHOUSE_ADDR", "127.0.0.1:1")
	for _, args := range [][]string{
		{"frobnicate"},
		{"usage", "--json", "--csv"},
		{"usage", "--nope"},
		{"usage", "extra"},
		{"usage", "--key-id", "team-a", "--key", "team-b"},
	} {
		if code, _, _ := droverctl(t, args...); code != 2 {
			t.Errorf("%v: exit %d, want 2", args, code)
		}
	}
	for _, args := range [][]string{
		{"usage", "--group-by", "colour"},
		{"usage", "--bucket", "90s"},
		{"usage", "--since", "soonish"},
	} {
		if code, _, errOut := droverctl(t, args...); code != 1 || errOut == "" {
			t.Errorf("%v: exit %d %q, want 1 with a message", args, code, errOut)
		}
	}
}
