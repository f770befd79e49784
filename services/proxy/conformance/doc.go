// Package conformance checks Drover against real Ollama. Its tests start two
// real Ollama servers (the v0.17.4 build and tiny models of
// .ci/realollama/setup.sh) with overlapping models, put an in-process Drover
// in front of them, and send every request a client can make once to Ollama
// directly and once through Drover. The answers must match in status,
// Content-Type, JSON shape and field types, stream chunk sequence and final
// chunk; only timings, generated text and sampling-dependent lengths may
// differ, plus the deliberate differences listed in allowedDifferences
// (diff_test.go), the one place that names them.
//
// The tests also check routing against the real servers (loaded-model
// preference, keep_alive 0, queueing in Drover instead of Ollama), token
// accounting, and the official Go client and ollama CLI through Drover.
//
// They run only with DROVER_CONFORMANCE=1 (make conformance), and then fail
// when the Ollama build is missing: build it with
// .ci/realollama/setup.sh build && .ci/realollama/setup.sh models.
// REALOLLAMA_DIR overrides where it is ($HOME/.cache/realollama).
package conformance
