// Package deploytest checks the deployment files that no Docker engine or
// cluster runs in CI: docker-compose.yml (parsed with compose-go, the
// library Docker Compose itself uses), the Dockerfiles (their Go build
// commands are run as written, with CGO_ENABLED=0), the configs under
// deploy/ that compose mounts, the Grafana dashboard (its SQL is run against
// a real ClickHouse) and the Kubernetes manifests. Every DROVER_ variable
// they set is loaded with pkg/config, so a misspelt key fails here rather
// than at start-up.
//
// It also checks that what ships is locked down: compose refuses to start
// without each secret (${VAR:?...}), every secret in compose and the
// manifests is a reference (the environment, a secretKeyRef), no shipped
// file holds a password, only the load balancer and Grafana publish ports,
// NATS and ClickHouse run the shipped nats.conf and users with the
// passwords each service logs in with, and, against a real
// clickhouse-server, that the shipped drover_reader can only read and
// drover_writer can migrate and insert. The package has tests only.
package deploytest
