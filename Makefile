# Drover's front door. Every target works on a fresh Debian machine with Go.
SHELL := /bin/bash
GO ?= go
MODULES := $(shell $(GO) list -m -f '{{.Dir}}' 2>/dev/null)
PKGS := $(addsuffix /...,$(MODULES))

.PHONY: build test deps lint bench bench-pipeline bench-compare bench-tenancy bench-routing run demo smoke conformance conformance-affinity fuzz
build:
	$(GO) build -o bin/ ./services/proxy/cmd/... ./testkit/ollamatest/cmd/... ./services/bench/cmd/...

# Side by side in one run: direct to the fake backend, a bare
# httputil.ReverseProxy, Drover, and Drover publishing usage to JetStream
# (drover+nats, nats-server as its own process as deployed); then the usage
# pipeline (bench-pipeline). BENCH_FLAGS=-duration 3s -rounds 1 for a quick look.
BENCH_FLAGS ?= -duration 10s -rounds 3
bench: build
	cd services/bench && $(GO) build -o ../../bin/nats-server github.com/nats-io/nats-server/v2
	./bin/drover-bench -backend-bin ./bin/fake-ollama -drover ./bin/drover-proxy -drover-nats -nats-bin ./bin/nats-server $(BENCH_FLAGS) -json bench.json
	$(MAKE) --no-print-directory bench-pipeline

# The current drover-proxy beside one built from BASE (any git revision),
# interleaved in one run: drover ÷ baseline throughput and CPU per request,
# goal >= 0.97 (a change that should not cost speed).
BASE ?= HEAD~1
bench-compare: build
	rm -rf .run/baseline && mkdir -p .run/baseline
	git archive $(BASE) | tar -x -C .run/baseline
	cd .run/baseline && $(GO) build -o $(CURDIR)/bin/drover-proxy-baseline ./services/proxy/cmd/drover-proxy
	./bin/drover-bench -backend-bin ./bin/fake-ollama -drover ./bin/drover-proxy -baseline ./bin/drover-proxy-baseline $(BENCH_FLAGS) -json bench-compare.json

# Limits and fair sharing on three drover-proxy replicas sharing one
# nats-server (JetStream, unauthenticated, loopback) in front of fake
# backends: budget overshoot (admission reserve beside count), the light
# key's wait and Jain's index on a saturated fleet, interactive wait beside
# a batch flood, and what an ideal scheduler that cannot preempt would do on
# the same arrivals (docs/limits-bench.md). TENANCY_FLAGS=-duration 5s for a
# quick look; TENANCY_FLAGS=-scenarios ideal for the model alone (no fleet).
TENANCY_FLAGS ?=
bench-tenancy: build
	cd services/bench && $(GO) build -o ../../bin/nats-server github.com/nats-io/nats-server/v2
	./bin/drover-bench-tenancy -drover ./bin/drover-proxy -backend-bin ./bin/fake-ollama -nats-bin ./bin/nats-server $(TENANCY_FLAGS) -json bench-tenancy.json

# Routing strategies on four fake backends that cache prompt prefixes per
# slot (issue 15): least_loaded, round_robin, session, prefix; one replica
# and three sharing one nats-server, prefix with and without sharing its
# index (docs/routing-bench.md). About 5 minutes; ROUTING_FLAGS=-quick for a look.
ROUTING_FLAGS ?=
bench-routing: build
	cd services/bench && $(GO) build -o ../../bin/nats-server github.com/nats-io/nats-server/v2
	./bin/drover-bench-routing -drover ./bin/drover-proxy -backend-bin ./bin/fake-ollama -nats-bin ./bin/nats-server $(ROUTING_FLAGS) -json bench-routing.json -svg docs/bench-routing.svg

# The aggregator against real NATS and ClickHouse (clickhouse-server must be
# installed): BenchmarkIngest, a 300,000-event backlog from JetStream into
# ClickHouse in events/s; BenchmarkDelay, event time to row stored at
# 20,000 events/s, p50/p99. Each runs PIPELINE_COUNT times; see docs/pipeline.md.
PIPELINE_COUNT ?= 3
bench-pipeline:
	cd services/aggregator && $(GO) test -run '^$$' -bench 'Ingest|Delay' -benchtime 300000x -count $(PIPELINE_COUNT) -timeout 30m ./internal/ingest/

# The whole topology as local processes: NATS, ClickHouse, the aggregator,
# two proxies behind a load balancer, fake backends (deploy/local/run.sh).
# Locked down like compose: the admin key and the NATS and ClickHouse
# passwords are generated on the first start (the admin key printed once)
# and kept in .run/secrets.env. A service that dies is started again with
# backoff. NATS_CLUSTER=3 make run: NATS as three routed nodes, the usage
# stream and buckets on all three (deploy/nats/README.md).
run: build
	./deploy/local/run.sh

# make run, plus traffic with two client keys (team-a, team-b) and a usage
# table every 15 seconds.
demo: build
	DEMO=1 DROVER_AUTH_KEYS=$${DROVER_AUTH_KEYS-team-a:demo-key-a,team-b:demo-key-b} ./deploy/local/run.sh

# The local stack end to end, as CI runs it (deploy/local/smoke.sh).
smoke: build
	./deploy/local/smoke.sh

# Tests run against real servers: Debian's clickhouse-server and Chromium are
# installed first when missing (.ci/deps).
test: deps
	$(GO) test -race -count=1 -timeout 20m $(PKGS)

deps:
	./.ci/deps

# A short coverage-guided fuzz run of every parser of outside bytes
# (FUZZTIME=10s each; docs/hostile.md). Crashers land in testdata/fuzz.
fuzz:
	./.ci/fuzz

# Drover in front of two real Ollama servers, compared with Ollama itself
# (services/proxy/conformance). Needs .ci/realollama/setup.sh build and
# models first (cached in $HOME/.cache/realollama); fails without them.
conformance:
	DROVER_CONFORMANCE=1 $(GO) test -race -count=1 -timeout 5m ./services/proxy/conformance/

# Issue 15 on real Ollama: eight six-turn conversations through Drover on
# two Ollama servers with 4 slots each, routed by prefix and by least load,
# beside the same conversations pinned one server each; logs Ollama's
# prompt_eval_duration over follow-up turns and the wall time
# (docs/routing-bench.md). Without -race: its figures are timings.
conformance-affinity:
	DROVER_CONFORMANCE=1 DROVER_AFFINITY=1 $(GO) test -count=1 -timeout 10m -run 'TestAffinityRealOllama' -v ./services/proxy/conformance/

lint:
	@out=$$(gofmt -l $(MODULES)); if [ -n "$$out" ]; then echo "gofmt needs running on:"; echo "$$out"; exit 1; fi
	$(GO) vet $(PKGS)
	@bad=$$($(GO) list -deps $(filter-out %/testkit/...,$(PKGS)) | grep '/drover/testkit'); if [ -n "$$bad" ]; then echo "production code imports the test kit: $$bad"; exit 1; fi
	$(GO) run honnef.co/go/tools/cmd/staticcheck@v0.7.0 $(PKGS)
