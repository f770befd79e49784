package main

import (
	"flag"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/droverhq/drover/pkg/chstore"
	"github.com/droverhq/drover/pkg/config"
)

// commonFlags are accepted by every subcommand.
type commonFlags struct {
	config     string
	clickhouse string
	database   string
}

// commandFlagSet is the flag set of one droverctl command: errors are
// returned, not fatal, and -h prints the command's usage line and flags.
func commandFlagSet(name, usage string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet("droverctl "+name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: droverctl %s %s\n\nFlags:\n", name, usage)
		fs.PrintDefaults()
	}
	return fs
}

func newFlagSet(name, usage string, stderr io.Writer) (*flag.FlagSet, *commonFlags) {
	fs := commandFlagSet(name, usage, stderr)
	c := &commonFlags{}
	fs.StringVar(&c.config, "config", "", "YAML config file (DROVER_ variables override it)")
	fs.StringVar(&c.clickhouse, "clickhouse", "", "ClickHouse native address host:port (default: clickhouse.addr)")
	fs.StringVar(&c.database, "database", "", "ClickHouse database (default: clickhouse.database)")
	return fs, c
}

// parse parses args, mapping flag errors to errUsage.
func parse(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		if err == flag.ErrHelp {
			return err
		}
		return errUsage
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(fs.Output(), "unexpected argument %q\n", fs.Arg(0))
		fs.Usage()
		return errUsage
	}
	return nil
}

// openStore loads the configuration, applies the flags and opens ClickHouse.
func (c *commonFlags) openStore() (*chstore.Store, error) {
	cfg, err := config.Load(c.config, os.Environ())
	if err != nil {
		return nil, err
	}
	ch := cfg.ClickHouse
	if c.clickhouse != "" {
		ch.Addr = c.clickhouse
	}
	if c.database != "" {
		ch.Database = c.database
	}
	if ch.Addr == "" {
		return nil, fmt.Errorf("no ClickHouse address: set -clickhouse, clickhouse.addr or DROVER_CLICKHOUSE_ADDR")
	}
	opts := chstore.FromConfig(ch)
	opts.ReadTimeout = max(ch.ReadTimeout, 30*time.Second)
	return chstore.Open(opts)
}
