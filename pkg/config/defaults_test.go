package config

import (
	"reflect"
	"testing"
	"time"
)

// The defaults are a contract with deployed services and docs: a config
// with nothing set gets exactly these.
func TestDefaults(t *testing.T) {
	c, err := FromStruct(&Config{Replica: "r1", Backends: []Backend{{URL: "http://gpu-a:11434/"}}})
	if err != nil {
		t.Fatal(err)
	}
	want := Config{
		Listen: "127.0.0.1:12434", Replica: "r1", LogLevel: "info",
		Backends: []Backend{{Name: "gpu-a:11434", URL: "http://gpu-a:11434", Type: "ollama", Weight: 1}},
		Routing: Routing{MaxConcurrency: 4, Queue: Queue{MaxLength: 1024, MaxWait: 60 * time.Second, MaxPerKey: 256}, MaxAttempts: 3,
			ConnectTimeout: 3 * time.Second, HeaderTimeout: 10 * time.Minute, CancelGrace: 50 * time.Millisecond,
			Strategy: "prefix", Affinity: DefaultAffinity(), FirstByteTimeout: 60 * time.Second, WriteTimeout: 30 * time.Second},
		Cache:  Cache{ModelsTTL: 5 * time.Minute, ModelsStale: 10 * time.Minute, LoadedTTL: 10 * time.Second, LoadedStale: 60 * time.Second},
		Health: Health{FailureThreshold: 3, OpenFor: 2 * time.Second, OpenMax: 60 * time.Second, ProbeInterval: 2 * time.Second},
		Auth:   Auth{Bucket: "drover_keys", StateFile: "./data/keys.json"},
		Limits: Limits{DefaultOutputTokens: 512, Admission: "reserve"},
		NATS:   NATS{Stream: "USAGE", MaxAge: 168 * time.Hour, MaxBytes: 1 << 30, DuplicateWindow: 10 * time.Minute, Partitions: 8, Replicas: 1},
		Usage: Usage{QueueSize: 65536, SpoolDir: "./data/spool", SpoolMaxBytes: 1 << 30, SpoolSyncInterval: 100 * time.Millisecond,
			BatchSize: 500, BatchLinger: 50 * time.Millisecond, PublishMode: "batch", AckTimeout: 5 * time.Second},
		ClickHouse: ClickHouse{Database: "drover", Username: "default", DialTimeout: 5 * time.Second, ReadTimeout: 30 * time.Second},
		Aggregator: Aggregator{BatchSize: 20000, FlushInterval: 500 * time.Millisecond, MetricsListen: ":9464", Instance: "r1",
			LeaseBucket: "drover_aggregator", LeaseTTL: 10 * time.Second, FetchBatch: 2000,
			DeadLetterSubject: "drover.usage.deadletter", RetryMax: 30 * time.Second, ShutdownTimeout: 30 * time.Second},
		Server: Server{MaxBodyBytes: 32 << 20, MaxBlobBytes: 256 << 30, MaxHeaderBytes: 64 << 10, BodyTimeout: 60 * time.Second,
			ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 120 * time.Second, MaxEventBytes: 16 << 20},
	}
	if !reflect.DeepEqual(*c, want) {
		t.Fatalf("defaults\n got %+v\nwant %+v", *c, want)
	}
}

// A section set in part keeps what was set, nested sections included.
func TestDefaultsKeepWhatIsSet(t *testing.T) {
	c, err := FromStruct(&Config{
		Routing: Routing{Queue: Queue{MaxLength: 7}},
		NATS:    NATS{Stream: "OTHER", URL: "nats://n:4222"},
		Usage:   Usage{PublishMode: "message"},
	})
	if err != nil {
		t.Fatal(err)
	}
	if c.Routing.Queue != (Queue{MaxLength: 7, MaxWait: 60 * time.Second, MaxPerKey: 256}) || c.Routing.MaxAttempts != 3 {
		t.Fatalf("routing %+v", c.Routing)
	}
	if c.NATS.Stream != "OTHER" || c.NATS.URL != "nats://n:4222" || c.NATS.Partitions != 8 {
		t.Fatalf("nats %+v", c.NATS)
	}
	if c.Usage.PublishMode != "message" || c.Usage.QueueSize != 65536 {
		t.Fatalf("usage %+v", c.Usage)
	}
}
