#!/usr/bin/env bash
# Runs Drover locally as plain processes: the proxy in front of the Ollama
# servers named in DROVER_BACKENDS, or, when none are named, in front of two
# fake Ollama servers so that it works on a fresh machine. Ctrl-C stops all.
#
#   make run                                     # fakes
#   DROVER_BACKENDS=http://gpu1:11434,http://gpu2:11434 make run
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=${BIN:-./bin}
RUN=${RUN_DIR:-./.run}
PORT=${DROVER_PORT:-12434}
mkdir -p "$RUN"

pids=()
cleanup() {
	trap - INT TERM EXIT
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
	wait 2>/dev/null || true
	echo "stopped"
}
trap cleanup INT TERM EXIT

if [[ -z ${DROVER_BACKENDS:-} ]]; then
	backends=()
	for p in 11501 11502; do
		"$BIN/fake-ollama" -addr "127.0.0.1:$p" -chunks 20 -chunk-delay 5ms >"$RUN/fake-$p.log" 2>&1 &
		pids+=($!)
		backends+=("http://127.0.0.1:$p")
		echo "fake Ollama        http://127.0.0.1:$p  (log $RUN/fake-$p.log)"
	done
	export DROVER_BACKENDS=$(IFS=,; echo "${backends[*]}")
fi

DROVER_LISTEN=${DROVER_LISTEN:-127.0.0.1:$PORT} "$BIN/drover-proxy" ${DROVER_CONFIG:+-config "$DROVER_CONFIG"} >"$RUN/proxy.log" 2>&1 &
pids+=($!)
for _ in $(seq 50); do
	curl -fsS -m 1 "http://127.0.0.1:$PORT/" >/dev/null 2>&1 && break
	sleep 0.1
done
echo "drover-proxy       http://127.0.0.1:$PORT  (log $RUN/proxy.log)  backends: $DROVER_BACKENDS"
echo
echo "try:  OLLAMA_HOST=127.0.0.1:$PORT ollama list"
echo "      curl http://127.0.0.1:$PORT/api/chat -d '{\"model\":\"tiny\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}'"
echo "Ctrl-C stops everything."
wait -n "${pids[@]}"
