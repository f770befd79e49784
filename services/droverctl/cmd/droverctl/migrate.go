package main

import (
	"context"
	"fmt"
	"io"
)

var migrateCommand = &command{
	name:    "migrate",
	summary: "apply the ClickHouse migrations (idempotent)",
	run:     runMigrate,
}

func runMigrate(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs, common := newFlagSet("migrate", "[-config FILE] [-clickhouse HOST:PORT] [-database NAME]", stderr)
	if err := parse(fs, args); err != nil {
		return err
	}
	store, err := common.openStore()
	if err != nil {
		return err
	}
	defer store.Close()
	applied, err := store.Migrate(ctx)
	for _, name := range applied {
		fmt.Fprintf(stdout, "applied %s\n", name)
	}
	if err != nil {
		return err
	}
	if len(applied) == 0 {
		fmt.Fprintf(stdout, "database %s is up to date\n", store.Database())
	}
	return nil
}
