#!/usr/bin/env bash
# Real Ollama on CPU with tiny random-weight models, for testing a router
# against the real wire protocol. See README.md beside this file.
#
#   .ci/realollama/setup.sh [all|build|models|start|create|smoke|stop|status]
#
#   all     build + models + start + create + smoke (default)
#   build   go install github.com/ollama/ollama@$OLLAMA_VERSION (CPU only)
#   models  write the tiny GGUF files and Modelfiles
#   start   start `ollama serve` on 127.0.0.1:$PORT (background, pid file)
#   create  ollama create tiny, tiny2, tiny-fixed, tiny-embed; cp tiny tiny-alias
#   smoke   exercise the endpoints once and print timings
#   stop    stop the server started by `start` (by its pid)
#
# Env: OLLAMA_VERSION (v0.17.4), REALOLLAMA_DIR ($HOME/.cache/realollama), PORT (11500).
# OLLAMA_NUM_PARALLEL, OLLAMA_MAX_LOADED_MODELS, OLLAMA_KEEP_ALIVE, OLLAMA_DEBUG,
# ... in the environment of `start` reach `ollama serve` unchanged.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
VERSION=${OLLAMA_VERSION:-v0.17.4}
DIR=${REALOLLAMA_DIR:-$HOME/.cache/realollama}
PORT=${PORT:-11500}
BIN=$DIR/bin/ollama
ADDR=127.0.0.1:$PORT
export OLLAMA_HOST=$ADDR

# ollama runs with HOME=$DIR/home, so its key pair (~/.ollama/id_ed25519)
# stays out of the real home directory; go commands keep the real HOME.
ol() { mkdir -p "$DIR/home" && HOME=$DIR/home "$BIN" "$@"; }

command -v go >/dev/null || PATH=/usr/local/go/bin:$PATH

log() { printf '[realollama] %s\n' "$*" >&2; }

build() {
	if [[ -x $BIN && "$(cat "$DIR/bin/.version" 2>/dev/null)" == "$VERSION" ]]; then
		log "ollama $VERSION already built at $BIN"
		return
	fi
	mkdir -p "$DIR/bin" "$DIR/include/miniaudio"
	# The module zip drops llama.cpp's vendor/ directory: nlohmann/json and
	# stb_image come from Debian, miniaudio (audio input only) gets a stub.
	if [[ ! -f /usr/include/nlohmann/json_fwd.hpp || ! -f /usr/include/stb/stb_image.h ]] ||
		! command -v g++ >/dev/null; then
		log "installing nlohmann-json3-dev libstb-dev g++ (apt)"
		apt-get update -qq
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nlohmann-json3-dev libstb-dev g++ >/dev/null
	fi
	cp "$HERE/miniaudio-stub.h" "$DIR/include/miniaudio/miniaudio.h"
	log "go install github.com/ollama/ollama@$VERSION (CPU, cgo; ~9 min on 2 cores)"
	local t0=$SECONDS
	GOBIN=$DIR/bin CGO_ENABLED=1 CGO_CPPFLAGS="-I$DIR/include" \
		timeout 3000 go install \
		-ldflags "-w -s -X=github.com/ollama/ollama/version.Version=${VERSION#v} -X=github.com/ollama/ollama/server.mode=release" \
		"github.com/ollama/ollama@$VERSION"
	echo "$VERSION" >"$DIR/bin/.version"
	log "built $BIN in $((SECONDS - t0))s"
}

models() {
	mkdir -p "$DIR/src"
	(cd "$HERE/tinymodel" && GOWORK=off go build -o "$DIR/bin/tinymodel" .)
	local g=$DIR/bin/tinymodel s=$DIR/src
	"$g" -o "$s/tiny.gguf" -seed 42 -name tiny-random-llama
	"$g" -o "$s/tiny2.gguf" -seed 7 -name tiny2-random-llama
	"$g" -o "$s/tiny-fixed.gguf" -seed 5 -eos-bias -5 -name tiny-fixed
	"$g" -o "$s/tiny-embed.gguf" -seed 11 -embedding -name tiny-embed
	local tmpl='TEMPLATE """{{- if .System }}<|system|>
{{ .System }}
{{ end }}{{- range .Messages }}<|{{ .Role }}|>
{{ .Content }}
{{ end }}<|assistant|>
"""'
	local tools_tmpl='TEMPLATE """{{- if .System }}<|system|>
{{ .System }}
{{ end }}{{- if .Tools }}<|tools|>
{{ range .Tools }}{{ . }}
{{ end }}{{ end }}{{- range .Messages }}<|{{ .Role }}|>
{{ .Content }}
{{ end }}<|assistant|>
"""'
	# One thread: ggml's spinning thread pool collapses when the 2 cores are
	# shared with other work (measured 5-25 tok/s with 2 threads vs 1500+ with 1).
	printf 'FROM ./tiny.gguf\n%s\nPARAMETER num_thread 1\n' "$tmpl" >"$s/Modelfile.tiny"
	printf 'FROM ./tiny2.gguf\n%s\nPARAMETER num_thread 1\n' "$tools_tmpl" >"$s/Modelfile.tiny2"
	printf 'FROM ./tiny-fixed.gguf\n%s\nPARAMETER num_thread 1\nPARAMETER num_predict 32\n' "$tmpl" >"$s/Modelfile.tiny-fixed"
	printf 'FROM ./tiny-embed.gguf\nPARAMETER num_thread 1\n' >"$s/Modelfile.tiny-embed"
}

alive() { curl -fsS -m 2 "http://$ADDR/api/version" >/dev/null 2>&1; }

start() {
	mkdir -p "$DIR/models"
	if [[ -f $DIR/serve.pid ]] && kill -0 "$(cat "$DIR/serve.pid")" 2>/dev/null && alive; then
		log "already serving on $ADDR (pid $(cat "$DIR/serve.pid"))"
		return
	fi
	if alive; then
		log "something else already answers on $ADDR; pick another PORT"
		exit 1
	fi
	mkdir -p "$DIR/home"
	HOME=$DIR/home OLLAMA_MODELS=$DIR/models nohup "$BIN" serve >"$DIR/serve.log" 2>&1 &
	echo $! >"$DIR/serve.pid"
	for _ in $(seq 100); do
		alive && { log "serving on $ADDR (pid $(cat "$DIR/serve.pid"), log $DIR/serve.log)"; return; }
		sleep 0.2
	done
	log "server did not come up; tail of $DIR/serve.log:"
	tail -20 "$DIR/serve.log" >&2
	exit 1
}

create() {
	local t0 m
	t0=$(date +%s%N)
	for m in tiny tiny2 tiny-fixed tiny-embed; do
		(cd "$DIR/src" && ol create "$m" -f "Modelfile.$m" >"$DIR/create-$m.log" 2>&1) ||
			{ cat "$DIR/create-$m.log" >&2; exit 1; }
	done
	ol cp tiny tiny-alias >/dev/null
	log "created tiny tiny2 tiny-fixed tiny-embed tiny-alias in $((($(date +%s%N) - t0) / 1000000))ms"
}

stop() {
	if [[ -f $DIR/serve.pid ]]; then
		local pid
		pid=$(cat "$DIR/serve.pid")
		if kill -0 "$pid" 2>/dev/null; then
			kill "$pid"
			for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
			kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
			log "stopped pid $pid"
		fi
		rm -f "$DIR/serve.pid"
	fi
}

status() {
	if alive; then
		log "serving on $ADDR: $(curl -s "http://$ADDR/api/version")"
		ol list
	else
		log "not serving on $ADDR"
	fi
}

smoke() { python3 "$HERE/smoke.py" "http://$ADDR"; }

case ${1:-all} in
all) build; models; start; create; smoke ;;
build | models | start | create | smoke | stop | status) "$1" ;;
*) sed -n '2,20p' "$0"; exit 2 ;;
esac
