// Package deploytest checks the deployment files that no Docker engine or
// cluster runs in CI: docker-compose.yml (parsed with compose-go, the
// library Docker Compose itself uses), the Dockerfiles (their Go build
// commands are run as written, with CGO_ENABLED=0), the configs under
// deploy/ that compose mounts, the Grafana dashboard (its SQL is run against
// a real ClickHouse) and the Kubernetes manifests. Every DROVER_ variable
// they set is loaded with pkg/config, so a misspelt key fails here rather
// than at start-up. The package has tests only.
package deploytest
