// Command droverctl is the operator's tool for a Drover deployment.
//
//	droverctl usage   [flags]   token usage from ClickHouse (table, --json, --csv)
//	droverctl migrate [flags]   apply the ClickHouse migrations
//	droverctl status  [flags]   fleet health, loaded models, in-flight (from a proxy's HTTP API)
//	droverctl cache invalidate  drop cached model lists across the fleet
//	droverctl pull MODEL        pull onto every backend, with progress bars
//	droverctl keys create|list|set|revoke|rotate   manage API keys fleet-wide (admin key)
//
// Every subcommand reads the same configuration as the services: -config
// FILE, then DROVER_ environment variables, then its own flags.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

// command is one subcommand. To add one, write a file with a *command and
// list it in commands.
type command struct {
	name    string
	summary string
	// run parses args (everything after the name) and does the work,
	// printing results to stdout.
	run func(ctx context.Context, args []string, stdout, stderr io.Writer) error
}

var commands = []*command{usageCommand, migrateCommand, statusCommand, cacheCommand, pullCommand, keysCommand}

// errUsage means the arguments were wrong; the flag set already said how.
var errUsage = errors.New("usage error")

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		printHelp(stderr)
		if len(args) == 0 {
			return 2
		}
		return 0
	}
	for _, c := range commands {
		if c.name == args[0] {
			err := c.run(ctx, args[1:], stdout, stderr)
			switch {
			case err == nil:
				return 0
			case errors.Is(err, flag.ErrHelp):
				return 0
			case errors.Is(err, errUsage):
				return 2
			}
			fmt.Fprintf(stderr, "droverctl %s: %v\n", c.name, err)
			return 1
		}
	}
	fmt.Fprintf(stderr, "droverctl: unknown command %q\n\n", args[0])
	printHelp(stderr)
	return 2
}

func printHelp(w io.Writer) {
	fmt.Fprintln(w, "Usage: droverctl <command> [flags]")
	fmt.Fprintln(w, "\nCommands:")
	for _, c := range commands {
		fmt.Fprintf(w, "  %-10s %s\n", c.name, c.summary)
	}
	fmt.Fprintln(w, "\nRun 'droverctl <command> -h' for its flags.")
}
