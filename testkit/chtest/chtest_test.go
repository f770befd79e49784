package chtest_test

import (
	"context"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"

	"github.com/droverhq/drover/testkit/chtest"
)

func query(t *testing.T, addr string) error {
	conn, err := clickhouse.Open(&clickhouse.Options{Addr: []string{addr}, DialTimeout: time.Second})
	if err != nil {
		return err
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var v string
	return conn.QueryRow(ctx, "SELECT version()").Scan(&v)
}

func TestStartStopRestart(t *testing.T) {
	start := time.Now()
	s := chtest.Start(t)
	t.Logf("ready after %s", time.Since(start))
	if err := query(t, s.Addr()); err != nil {
		t.Fatalf("query: %v", err)
	}
	s.Stop()
	if err := query(t, s.Addr()); err == nil {
		t.Fatal("query succeeded on a stopped server")
	}
	s.Restart()
	if err := query(t, s.Addr()); err != nil {
		t.Fatalf("query after restart: %v", err)
	}
}

func TestTwoServers(t *testing.T) {
	a, b := chtest.Start(t), chtest.Start(t)
	if a.Addr() == b.Addr() {
		t.Fatal("two servers share a port")
	}
	for _, s := range []*chtest.Server{a, b} {
		if err := query(t, s.Addr()); err != nil {
			t.Fatal(err)
		}
	}
}
