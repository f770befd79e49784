// Command drover-lb is the load balancer of the local stack (make run): round
// robin over drover-proxy replicas, streams flushed through, requests moved
// to another replica when one is stopping. docker-compose.yml uses nginx for
// the same job. See package lb.
//
//	drover-lb -listen 127.0.0.1:12434 http://127.0.0.1:12441 http://127.0.0.1:12442
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/droverhq/drover/pkg/config"
	"github.com/droverhq/drover/services/droverctl/internal/lb"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:"+config.DefaultPort, "address clients connect to")
	grace := flag.Duration("grace", 30*time.Second, "how long SIGTERM waits for responses in progress")
	flag.Usage = func() {
		fmt.Fprintln(os.Stderr, "Usage: drover-lb [-listen ADDR] REPLICA_URL...")
		flag.PrintDefaults()
	}
	flag.Parse()
	log := slog.New(slog.NewJSONHandler(os.Stderr, nil))
	b, err := lb.New(flag.Args(), lb.Options{Logger: log})
	if err != nil {
		fmt.Fprintln(os.Stderr, "drover-lb:", err)
		flag.Usage()
		os.Exit(2)
	}
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		fmt.Fprintln(os.Stderr, "drover-lb:", err)
		os.Exit(1)
	}
	log.Info("drover-lb listening", "addr", ln.Addr().String(), "replicas", flag.Args())
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := lb.Serve(ctx, ln, b, *grace); err != nil {
		log.Error("drover-lb stopped", "err", err)
		os.Exit(1)
	}
}
