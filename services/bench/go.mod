module github.com/droverhq/drover/services/bench

go 1.26.8

require (
	github.com/droverhq/drover/pkg v0.0.0
	github.com/droverhq/drover/schemas v0.0.0
	go.uber.org/goleak v1.3.0
)

require github.com/sourcegraph/conc v0.3.0 // indirect

replace (
	github.com/droverhq/drover/pkg => ../../pkg
	github.com/droverhq/drover/schemas => ../../schemas
)
