#!/usr/bin/env bash
# Drover's whole topology as local processes, the same as docker-compose.yml
# but without Docker, on a fresh Debian machine with Go:
#
#   NATS (JetStream)  ClickHouse  drover-aggregator  2 x drover-proxy  drover-lb
#   and two fake Ollama servers when DROVER_BACKENDS is unset.
#
#   make run                                              # fakes
#   DROVER_BACKENDS=http://gpu1:11434,http://gpu2:11434 make run
#   make demo                                             # plus traffic and a usage table
#
# NATS is nats-server built from the Go module proxy; ClickHouse is Debian's
# clickhouse-server (installed with apt when missing), started with its own
# config, data directory and ports. State (JetStream, ClickHouse data, spools,
# logs) lives in $RUN_DIR (default ./.run), so usage survives restarts;
# remove the directory to start afresh. Ctrl-C (or SIGTERM) stops everything
# in order: load balancer, proxies (they drain and publish every usage event),
# aggregator (it flushes), then backends, NATS and ClickHouse.
#
# Locked down as docker-compose.yml is: the proxies' admin key, the NATS
# users' passwords (deploy/nats/nats.conf) and the ClickHouse users'
# passwords (deploy/clickhouse/users.d/drover.xml) come from
# DROVER_ADMIN_KEY, DROVER_NATS_PROXY_PASSWORD, DROVER_NATS_AGGREGATOR_PASSWORD,
# CLICKHOUSE_READER_PASSWORD and CLICKHOUSE_WRITER_PASSWORD when set, else
# are generated on the first start and kept in $RUN_DIR/secrets.env (mode
# 0600, outside git) for the next. The admin key is printed when it is
# generated. Each process is handed only its own credentials.
#
# Settings (environment):
#   DROVER_PORT   client port, default 12434; every other port is derived from it
#   REPLICAS      proxy replicas, default 2
#   RUN_DIR       state and logs, default ./.run
#   NO_BUILD=1    use the binaries already in $BIN (default ./bin)
#   DEMO=1        send traffic and print usage every 15s (make demo)
# Any other DROVER_ variable (DROVER_AUTH_KEYS, DROVER_ROUTING_MAX_CONCURRENCY,
# DROVER_CONFIG, ...) reaches the proxies and the aggregator; DROVER_AUTH_KEYS
# adds keys beside the admin key (make demo's team-a and team-b).
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=${BIN:-./bin}
RUN=${RUN_DIR:-./.run}
PORT=${DROVER_PORT:-12434}
REPLICAS=${REPLICAS:-2}
# DROVER_PORT is this script's setting, not a Drover key: the services would
# refuse it.
unset DROVER_PORT
mkdir -p "$RUN"
RUN=$(cd "$RUN" && pwd)

# --- Secrets: from the environment, else kept from an earlier start, else
# generated. None is a Drover setting (the services refuse unknown DROVER_
# variables), so they leave the environment here and each process is
# handed its own.
SECRETS=$RUN/secrets.env
secret_names=(DROVER_ADMIN_KEY DROVER_NATS_PROXY_PASSWORD DROVER_NATS_AGGREGATOR_PASSWORD
	CLICKHOUSE_READER_PASSWORD CLICKHOUSE_WRITER_PASSWORD)
new_secret() {
	openssl rand -hex 24 2>/dev/null || od -An -N24 -tx1 /dev/urandom | tr -d ' \n'
}
declare -A secret=() secret_from=()
if [[ -f $SECRETS ]]; then
	while IFS='=' read -r k v; do
		[[ -n $k && $k != \#* ]] || continue
		secret[$k]=$v secret_from[$k]="kept in $SECRETS"
	done <"$SECRETS"
fi
for k in "${secret_names[@]}"; do
	if [[ -n ${!k:-} ]]; then
		secret[$k]=${!k} secret_from[$k]="from \$$k"
	elif [[ -z ${secret[$k]:-} ]]; then
		secret[$k]=$(new_secret) secret_from[$k]=generated
	fi
	# Passed in URLs and config files: keep to characters safe there.
	[[ ${secret[$k]} =~ ^[A-Za-z0-9._~+/=-]+$ ]] || {
		printf 'run.sh: %s: use letters, digits and ._~+/=- only\n' "$k" >&2
		exit 1
	}
	unset "$k"
done
(
	umask 077
	echo "# deploy/local/run.sh: this stack's secrets (make run). Not for the repository." >"$SECRETS.tmp"
	for k in "${secret_names[@]}"; do printf '%s=%s\n' "$k" "${secret[$k]}" >>"$SECRETS.tmp"; done
	mv "$SECRETS.tmp" "$SECRETS"
)
ADMIN_KEY=${secret[DROVER_ADMIN_KEY]}

NATS_PORT=$((PORT + 40)) NATS_MON=$((PORT + 41))
CH_TCP=$((PORT + 50)) CH_HTTP=$((PORT + 51)) CH_INTER=$((PORT + 52))
AGG_METRICS=$((PORT + 30))

log() { printf '%s\n' "$*" >&2; }
die() {
	log "run.sh: $*"
	exit 1
}

if [[ -z ${NO_BUILD:-} ]]; then
	log "building into $BIN/ ..."
	go build -o "$BIN/" ./services/proxy/cmd/drover-proxy ./services/aggregator/cmd/drover-aggregator \
		./services/droverctl/cmd/... ./testkit/ollamatest/cmd/fake-ollama github.com/nats-io/nats-server/v2
fi

find_clickhouse() {
	command -v clickhouse-server 2>/dev/null && return
	for b in /usr/bin/clickhouse-server /usr/sbin/clickhouse-server; do
		[[ -x $b ]] && echo "$b" && return
	done
	return 1
}
CH_BIN=${CLICKHOUSE_SERVER:-$(find_clickhouse || true)}
if [[ -z $CH_BIN ]]; then
	log "clickhouse-server is missing: installing Debian's package ..."
	sudo=()
	((EUID == 0)) || sudo=(sudo)
	"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
	"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq clickhouse-server clickhouse-client >/dev/null
	CH_BIN=$(find_clickhouse) || die "clickhouse-server still not found after apt-get install"
fi

# Processes, in start order; stopped in reverse.
pids=() names=()
echo -n >"$RUN/pids"
rm -f "$RUN/ready"
start() { # name logfile command...
	local name=$1 logf=$2
	shift 2
	# Own session: Ctrl-C reaches this script only, which stops the
	# children in order.
	setsid "$@" >"$logf" 2>&1 &
	pids+=($!)
	names+=("$name")
	echo "$! $name" >>"$RUN/pids"
}

stopping=
cleanup() {
	local code=$?
	trap - INT TERM EXIT
	[[ -n $stopping ]] && return
	stopping=1
	[[ -n ${demo_pid:-} ]] && kill "$demo_pid" 2>/dev/null && wait "$demo_pid" 2>/dev/null
	log ""
	log "stopping ..."
	for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
		local p=${pids[i]}
		kill -0 "$p" 2>/dev/null || continue
		kill -TERM "$p" 2>/dev/null || true
		# Proxies drain for up to 30s and publish for up to 20s.
		for _ in $(seq 600); do
			kill -0 "$p" 2>/dev/null || break
			sleep 0.1
		done
		if kill -0 "$p" 2>/dev/null; then
			log "  ${names[i]} did not stop in 60s: killing it"
			kill -KILL "$p" 2>/dev/null || true
		fi
		wait "$p" 2>/dev/null || true
		log "  stopped ${names[i]}"
	done
	log "stopped"
	exit "$code"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

wait_ready() { # name pid logfile check-command...
	local name=$1 pid=$2 logf=$3
	shift 3
	for _ in $(seq 600); do
		"$@" >/dev/null 2>&1 && return 0
		if ! kill -0 "$pid" 2>/dev/null; then
			log "$name exited during start-up; the end of $logf:"
			tail -n 30 "$logf" >&2 || true
			exit 1
		fi
		sleep 0.1
	done
	log "$name not ready after 60s; the end of $logf:"
	tail -n 30 "$logf" >&2 || true
	exit 1
}
http_ok() { curl -fsS -m 2 -o /dev/null "$1"; }

# --- ClickHouse: its own config, data and ports under $RUN/clickhouse.
CH_DIR=$RUN/clickhouse
mkdir -p "$CH_DIR"/data/{tmp,user_files,format_schemas}
cat >"$CH_DIR/config.xml" <<EOF
<?xml version="1.0"?>
<yandex>
  <logger><level>warning</level><log>$CH_DIR/server.log</log><errorlog>$CH_DIR/server.err.log</errorlog><size>50M</size><count>1</count></logger>
  <listen_host>127.0.0.1</listen_host>
  <tcp_port>$CH_TCP</tcp_port>
  <http_port>$CH_HTTP</http_port>
  <interserver_http_port>$CH_INTER</interserver_http_port>
  <interserver_http_host>127.0.0.1</interserver_http_host>
  <path>$CH_DIR/data/</path>
  <tmp_path>$CH_DIR/data/tmp/</tmp_path>
  <user_files_path>$CH_DIR/data/user_files/</user_files_path>
  <format_schema_path>$CH_DIR/data/format_schemas/</format_schema_path>
  <users_config>$CH_DIR/users.xml</users_config>
  <default_profile>default</default_profile>
  <default_database>default</default_database>
  <timezone>UTC</timezone>
  <mark_cache_size>67108864</mark_cache_size>
  <uncompressed_cache_size>67108864</uncompressed_cache_size>
  <mlock_executable>false</mlock_executable>
</yandex>
EOF
cat >"$CH_DIR/users.xml" <<'EOF'
<?xml version="1.0"?>
<yandex>
  <profiles><default><max_memory_usage>4000000000</max_memory_usage></default></profiles>
  <users><default><password></password><networks><ip>127.0.0.1</ip><ip>::1</ip></networks><profile>default</profile><quota>default</quota></default></users>
  <quotas><default><interval><duration>3600</duration><queries>0</queries><errors>0</errors><result_rows>0</result_rows><read_rows>0</read_rows><execution_time>0</execution_time></interval></default></quotas>
</yandex>
EOF
# Drover's users: the shipped file, as compose and k8s mount it; the server
# reads their passwords from its environment.
mkdir -p "$CH_DIR/users.d"
install -m 0644 deploy/clickhouse/users.d/drover.xml "$CH_DIR/users.d/drover.xml"
CLICKHOUSE_READER_PASSWORD=${secret[CLICKHOUSE_READER_PASSWORD]} CLICKHOUSE_WRITER_PASSWORD=${secret[CLICKHOUSE_WRITER_PASSWORD]} \
	start clickhouse "$CH_DIR/stdout.log" "$CH_BIN" --config-file="$CH_DIR/config.xml"
wait_ready clickhouse "${pids[-1]}" "$CH_DIR/server.err.log" http_ok "http://127.0.0.1:$CH_HTTP/?query=SELECT%201"

# --- NATS with JetStream: deploy/nats/nats.conf (its users and permissions)
# with the store under $RUN/nats (nats-server refuses -sd beside a config's
# store_dir); address and ports from the flags.
sed 's|^\([[:space:]]*store_dir:\).*|\1 "'"$RUN/nats"'"|' deploy/nats/nats.conf >"$RUN/nats.conf"
grep -qF "store_dir: \"$RUN/nats\"" "$RUN/nats.conf" || die "deploy/nats/nats.conf has no store_dir line to point at $RUN/nats"
DROVER_NATS_PROXY_PASSWORD=${secret[DROVER_NATS_PROXY_PASSWORD]} DROVER_NATS_AGGREGATOR_PASSWORD=${secret[DROVER_NATS_AGGREGATOR_PASSWORD]} \
	start nats "$RUN/nats.log" "$BIN/nats-server" -c "$RUN/nats.conf" -a 127.0.0.1 -p "$NATS_PORT" -m "$NATS_MON" -n drover-local
wait_ready nats "${pids[-1]}" "$RUN/nats.log" http_ok "http://127.0.0.1:$NATS_MON/healthz?js-enabled-only=true"

export DROVER_NATS_URL=nats://127.0.0.1:$NATS_PORT
export DROVER_CLICKHOUSE_ADDR=127.0.0.1:$CH_TCP
config=()
[[ -n ${DROVER_CONFIG:-} ]] && config=(-config "$DROVER_CONFIG")

# --- Aggregator (applies the ClickHouse migrations on start): NATS user
# aggregator, ClickHouse user drover_writer.
DROVER_AGGREGATOR_METRICS_LISTEN=127.0.0.1:$AGG_METRICS DROVER_REPLICA=aggregator \
	DROVER_NATS_USER=aggregator DROVER_NATS_PASSWORD=${secret[DROVER_NATS_AGGREGATOR_PASSWORD]} \
	DROVER_CLICKHOUSE_USERNAME=drover_writer DROVER_CLICKHOUSE_PASSWORD=${secret[CLICKHOUSE_WRITER_PASSWORD]} \
	start aggregator "$RUN/aggregator.log" "$BIN/drover-aggregator" "${config[@]}"
wait_ready aggregator "${pids[-1]}" "$RUN/aggregator.log" http_ok "http://127.0.0.1:$AGG_METRICS/health"

# --- Backends: fakes unless DROVER_BACKENDS names real ones.
fakes=()
if [[ -z ${DROVER_BACKENDS:-} ]]; then
	backends=()
	for i in 1 2; do
		p=$((PORT + 60 + i))
		start "fake-ollama-$i" "$RUN/fake-$i.log" "$BIN/fake-ollama" -addr "127.0.0.1:$p" -chunks 20 -chunk-delay 5ms -parallel 4
		wait_ready "fake-ollama-$i" "${pids[-1]}" "$RUN/fake-$i.log" http_ok "http://127.0.0.1:$p/"
		backends+=("http://127.0.0.1:$p")
		fakes+=("http://127.0.0.1:$p")
	done
	export DROVER_BACKENDS=$(IFS=,; echo "${backends[*]}")
fi

# --- Proxy replicas, each with its own spool and key state: NATS user
# proxy, ClickHouse user drover_reader, the admin key beside any
# DROVER_AUTH_KEYS.
auth_keys=admin:$ADMIN_KEY:admin${DROVER_AUTH_KEYS:+,$DROVER_AUTH_KEYS}
replicas=()
for ((i = 1; i <= REPLICAS; i++)); do
	p=$((PORT + 6 + i))
	DROVER_LISTEN=127.0.0.1:$p DROVER_REPLICA=proxy-$i DROVER_USAGE_SPOOL_DIR=$RUN/spool-$i \
		DROVER_AUTH_KEYS=$auth_keys DROVER_AUTH_STATE_FILE=$RUN/keys-$i.json \
		DROVER_NATS_USER=proxy DROVER_NATS_PASSWORD=${secret[DROVER_NATS_PROXY_PASSWORD]} \
		DROVER_CLICKHOUSE_USERNAME=drover_reader DROVER_CLICKHOUSE_PASSWORD=${secret[CLICKHOUSE_READER_PASSWORD]} \
		start "drover-proxy-$i" "$RUN/proxy-$i.log" "$BIN/drover-proxy" "${config[@]}"
	wait_ready "drover-proxy-$i" "${pids[-1]}" "$RUN/proxy-$i.log" http_ok "http://127.0.0.1:$p/"
	replicas+=("http://127.0.0.1:$p")
done

# --- One port for clients.
start drover-lb "$RUN/lb.log" "$BIN/drover-lb" -listen "127.0.0.1:$PORT" "${replicas[@]}"
wait_ready drover-lb "${pids[-1]}" "$RUN/lb.log" http_ok "http://127.0.0.1:$PORT/"

case ${secret_from[DROVER_ADMIN_KEY]} in
generated) admin_line="$ADMIN_KEY  (generated now, shown once; kept in $SECRETS)" ;;
*) admin_line="${secret_from[DROVER_ADMIN_KEY]}" ;;
esac
cat <<EOF

Drover                http://127.0.0.1:$PORT        (drover-lb over ${#replicas[@]} replicas; log $RUN/lb.log)
$(for i in "${!replicas[@]}"; do printf '  drover-proxy-%d      %-29s (log %s/proxy-%d.log)\n' $((i + 1)) "${replicas[i]}" "$RUN" $((i + 1)); done)
dashboard             http://127.0.0.1:$PORT/       (asks for a key)
admin key             $admin_line
backends              $DROVER_BACKENDS$( ((${#fakes[@]})) && echo "  (fake Ollama)")
drover-aggregator     http://127.0.0.1:$AGG_METRICS/metrics  (log $RUN/aggregator.log)
NATS                  $DROVER_NATS_URL   (monitoring http://127.0.0.1:$NATS_MON; users proxy and aggregator only)
ClickHouse            $DROVER_CLICKHOUSE_ADDR (native)  http://127.0.0.1:$CH_HTTP  (data $CH_DIR; users drover_reader, drover_writer)

Every route but / and /health needs a key; the admin key manages the rest:
try:  export DROVERCTL_API_KEY=\$(sed -n 's/^DROVER_ADMIN_KEY=//p' $SECRETS)
      $BIN/droverctl status --url http://127.0.0.1:$PORT
      $BIN/droverctl keys create team-a --url http://127.0.0.1:$PORT     # a client key, printed once
      curl -H "Authorization: Bearer \$DROVERCTL_API_KEY" http://127.0.0.1:$PORT/api/chat -d '{"model":"tiny","messages":[{"role":"user","content":"hi"}]}'
      OPENAI_BASE_URL=http://127.0.0.1:$PORT/v1 OPENAI_API_KEY=<a key> ...   # OpenAI SDKs; Anthropic's: x-api-key
      DROVER_CLICKHOUSE_ADDR=$DROVER_CLICKHOUSE_ADDR DROVER_CLICKHOUSE_USERNAME=drover_reader \\
        DROVER_CLICKHOUSE_PASSWORD=\$(sed -n 's/^CLICKHOUSE_READER_PASSWORD=//p' $SECRETS) $BIN/droverctl usage
Ctrl-C stops everything.
EOF
echo "ready" >"$RUN/ready"

if [[ -n ${DEMO:-} ]]; then
	DEMO_ADMIN_KEY=$ADMIN_KEY DROVER_CLICKHOUSE_USERNAME=drover_reader DROVER_CLICKHOUSE_PASSWORD=${secret[CLICKHOUSE_READER_PASSWORD]} \
		./deploy/local/demo.sh "http://127.0.0.1:$PORT" "$BIN" &
	demo_pid=$!
fi

# Until Ctrl-C, or until a process dies on its own.
set +e
wait -n "${pids[@]}"
code=$?
for i in "${!pids[@]}"; do
	if ! kill -0 "${pids[i]}" 2>/dev/null; then
		log "${names[i]} exited (status $code); see its log in $RUN"
	fi
done
exit 1
