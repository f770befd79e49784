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
# remove the directory to start afresh.
#
# A service that dies once the stack is up is started again, as compose's
# restart: unless-stopped does: after 0.5s, doubling with every exit in a
# row up to 30s, back to 0.5s once it has run for 30s; each exit and
# restart is logged (here and in $RUN_DIR/run.log). Ctrl-C, SIGTERM or
# SIGHUP (to this script or to make run's whole process group) stops
# everything in order: load balancer, proxies (they drain and publish every
# usage event), aggregator (it flushes), then backends, NATS and
# ClickHouse. The services run in sessions of their own, so the signal
# reaches this script only; once it is stopping, further signals and a
# closed terminal or pipe cannot cut the stop short. Only SIGKILL can:
# $RUN_DIR/pids then lists what is left running, and the next start stops
# those first.
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
#   NATS_CLUSTER  3 runs NATS as a three-node cluster (routes on loopback
#                 with a password of their own, a JetStream store per node)
#                 with the usage stream and the buckets on all three
#                 (nats.replicas 3); default 1, one server
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
NATS_NODES=${NATS_CLUSTER:-1}
[[ $NATS_NODES == 1 || $NATS_NODES == 3 ]] || {
	echo "run.sh: NATS_CLUSTER must be 1 or 3, got $NATS_NODES" >&2
	exit 2
}
# DROVER_PORT is this script's setting, not a Drover key: the services would
# refuse it.
unset DROVER_PORT
mkdir -p "$RUN"
RUN=$(cd "$RUN" && pwd)
# One stack per run directory.
if [[ -f $RUN/run.pid ]]; then
	prev=$(cat "$RUN/run.pid")
	if [[ $prev != "$$" ]] && kill -0 "$prev" 2>/dev/null && grep -qa 'run\.sh' "/proc/$prev/cmdline" 2>/dev/null; then
		echo "run.sh: another run.sh (pid $prev) is running on $RUN" >&2
		exit 1
	fi
fi

# --- Secrets: from the environment, else kept from an earlier start, else
# generated. None is a Drover setting (the services refuse unknown DROVER_
# variables), so they leave the environment here and each process is
# handed its own.
SECRETS=$RUN/secrets.env
secret_names=(DROVER_ADMIN_KEY DROVER_NATS_PROXY_PASSWORD DROVER_NATS_AGGREGATOR_PASSWORD
	CLICKHOUSE_READER_PASSWORD CLICKHOUSE_WRITER_PASSWORD NATS_ROUTE_PASSWORD)
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

# NATS node n (1..3): client port PORT+38+2n, monitoring PORT+39+2n,
# cluster routes PORT+45+n.
NATS_PORT=$((PORT + 40)) NATS_MON=$((PORT + 41))
CH_TCP=$((PORT + 50)) CH_HTTP=$((PORT + 51)) CH_INTER=$((PORT + 52))
AGG_METRICS=$((PORT + 30))

# Messages go to stderr and to $RUN/run.log; a closed terminal or pipe
# loses only the first.
log() {
	printf '%s\n' "$*" >&2 2>/dev/null || true
	printf '%s %s\n' "$(date -u +%FT%TZ)" "$*" >>"$RUN/run.log" 2>/dev/null || true
}
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

# Processes, in start order; stopped in reverse. What started each (its
# command, the environment it was handed, its log) is kept to start it
# again when it dies.
pids=() names=() logs=() cmds=() envs=() started=() restarts=() due=()
rm -f "$RUN/ready"

# A run.sh killed outright (SIGKILL, which
# nothing can catch) leaves its services running: the next start stops
# them first, in reverse order, each recognised by its pid and its start
# time (so that a recycled pid is never signalled).
proc_start() { # pid -> the process's start time, in clock ticks since boot
	local stat
	stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
	# shellcheck disable=SC2086 # the fields after "(comm) "
	set -- ${stat##*) }
	echo "${20}"
}
if [[ -f $RUN/procs ]]; then
	while read -r pid since name; do
		[[ $(proc_start "$pid" || true) == "$since" ]] || continue
		log "stopping $name (pid $pid), left running by a run.sh that was killed"
		kill -TERM "$pid" 2>/dev/null || true
		for _ in $(seq 600); do
			kill -0 "$pid" 2>/dev/null || break
			sleep 0.1
		done
		kill -KILL "$pid" 2>/dev/null || true
	done < <(tac "$RUN/procs")
	rm -f "$RUN/procs"
fi
echo $$ >"$RUN/run.pid"
write_pids() {
	for i in "${!pids[@]}"; do echo "${pids[i]} ${names[i]}"; done >"$RUN/pids.tmp"
	mv "$RUN/pids.tmp" "$RUN/pids"
	for i in "${!pids[@]}"; do echo "${pids[i]} $(proc_start "${pids[i]}" || echo 0) ${names[i]}"; done >"$RUN/procs.tmp"
	mv "$RUN/procs.tmp" "$RUN/procs"
}
start() { # name logfile [VAR=value ...] command...
	local name=$1 logf=$2 i=${#pids[@]} env=()
	shift 2
	while (($#)) && [[ $1 =~ ^[A-Za-z_][A-Za-z0-9_]*= ]]; do
		env+=("$1")
		shift
	done
	names[i]=$name logs[i]=$logf restarts[i]=0 due[i]=
	# Kept quoted; the values (secrets among them) go to the process's
	# environment, never to a command line.
	envs[i]=$( ((${#env[@]} == 0)) || printf '%q ' "${env[@]}")
	cmds[i]=$(printf '%q ' "$@")
	: >"$logf"
	launch "$i"
}
launch() { # index
	local i=$1
	# Own session: Ctrl-C, and a signal to make run's process group, reach
	# this script only, which stops the services in order.
	(
		[[ -n ${envs[i]} ]] && eval "export ${envs[i]}"
		eval "exec setsid ${cmds[i]}"
	) >>"${logs[i]}" 2>&1 &
	pids[i]=$!
	started[i]=$EPOCHSECONDS
	write_pids
}

stopping=
cleanup() {
	local code=$?
	# Nothing may cut the stop short from here: more Ctrl-Cs or SIGTERMs,
	# or a terminal or pipe that went away with them (SIGPIPE), once made
	# this script die here and leave every service running.
	trap '' INT TERM HUP PIPE
	trap - EXIT
	set +e
	[[ -n $stopping ]] && return
	stopping=1
	[[ -n ${demo_pid:-} ]] && kill "$demo_pid" 2>/dev/null && wait "$demo_pid" 2>/dev/null
	[[ -n ${timer:-} ]] && kill "$timer" 2>/dev/null
	rm -f "$RUN/ready"
	log ""
	log "stopping ..."
	for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
		local p=${pids[i]}
		if [[ -n ${due[i]} ]] || ! kill -0 "$p" 2>/dev/null; then
			log "  ${names[i]} was not running (its restart is dropped)"
			continue
		fi
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
	rm -f "$RUN/ready" "$RUN/run.pid"
	log "stopped"
	exit "$code"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP
trap 'exit 141' PIPE

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
start clickhouse "$CH_DIR/stdout.log" \
	CLICKHOUSE_READER_PASSWORD="${secret[CLICKHOUSE_READER_PASSWORD]}" CLICKHOUSE_WRITER_PASSWORD="${secret[CLICKHOUSE_WRITER_PASSWORD]}" \
	"$CH_BIN" --config-file="$CH_DIR/config.xml"
wait_ready clickhouse "${pids[-1]}" "$CH_DIR/server.err.log" http_ok "http://127.0.0.1:$CH_HTTP/?query=SELECT%201"

# --- NATS with JetStream: deploy/nats/nats.conf (its users and permissions)
# with the store under $RUN (nats-server refuses -sd beside a config's
# store_dir); address and ports from the flags. NATS_CLUSTER=3: three
# nodes, each with its own store and config, routed to each other on
# loopback; a route must log in as user route with a password of its own
# (NATS_ROUTE_PASSWORD, kept with the other secrets), so no other local
# process can join the cluster.
nats_urls=() nats_mons=()
nats_env=(DROVER_NATS_PROXY_PASSWORD="${secret[DROVER_NATS_PROXY_PASSWORD]}"
	DROVER_NATS_AGGREGATOR_PASSWORD="${secret[DROVER_NATS_AGGREGATOR_PASSWORD]}")
if ((NATS_NODES == 1)); then
	sed 's|^\([[:space:]]*store_dir:\).*|\1 "'"$RUN/nats"'"|' deploy/nats/nats.conf >"$RUN/nats.conf"
	grep -qF "store_dir: \"$RUN/nats\"" "$RUN/nats.conf" || die "deploy/nats/nats.conf has no store_dir line to point at $RUN/nats"
	start nats "$RUN/nats.log" "${nats_env[@]}" "$BIN/nats-server" -c "$RUN/nats.conf" -a 127.0.0.1 -p "$NATS_PORT" -m "$NATS_MON" -n drover-local
	nats_urls=("nats://127.0.0.1:$NATS_PORT") nats_mons=("$NATS_MON")
else
	routes=()
	for n in 1 2 3; do routes+=("nats-route://route:${secret[NATS_ROUTE_PASSWORD]}@127.0.0.1:$((PORT + 45 + n))"); done
	for n in 1 2 3; do
		conf=$RUN/nats-$n.conf
		rm -f "$conf"
		mask=$(umask)
		umask 077 # it holds the route password
		{
			sed 's|^\([[:space:]]*store_dir:\).*|\1 "'"$RUN/nats-$n"'"|' deploy/nats/nats.conf
			printf '\n# run.sh NATS_CLUSTER=3: node %d of 3.\ncluster {\n  name: drover-local\n  listen: 127.0.0.1:%d\n' "$n" $((PORT + 45 + n))
			printf '  authorization { user: route, password: "%s" }\n' "${secret[NATS_ROUTE_PASSWORD]}"
			printf '  routes: [\n'
			printf '    "%s"\n' "${routes[@]}"
			printf '  ]\n}\n'
		} >"$conf"
		umask "$mask"
		grep -qF "store_dir: \"$RUN/nats-$n\"" "$conf" || die "deploy/nats/nats.conf has no store_dir line to point at $RUN/nats-$n"
		start "nats-$n" "$RUN/nats-$n.log" "${nats_env[@]}" \
			"$BIN/nats-server" -c "$conf" -a 127.0.0.1 -p $((PORT + 38 + 2 * n)) -m $((PORT + 39 + 2 * n)) -n "drover-local-$n"
		nats_urls+=("nats://127.0.0.1:$((PORT + 38 + 2 * n))") nats_mons+=($((PORT + 39 + 2 * n)))
	done
	export DROVER_NATS_REPLICAS=3
fi
for n in "${!nats_mons[@]}"; do
	i=$((${#pids[@]} - ${#nats_mons[@]} + n))
	wait_ready "${names[i]}" "${pids[i]}" "${logs[i]}" http_ok "http://127.0.0.1:${nats_mons[n]}/healthz?js-enabled-only=true"
done

export DROVER_NATS_URL=$(IFS=,; echo "${nats_urls[*]}")
export DROVER_CLICKHOUSE_ADDR=127.0.0.1:$CH_TCP
config=()
[[ -n ${DROVER_CONFIG:-} ]] && config=(-config "$DROVER_CONFIG")

# --- Aggregator (applies the ClickHouse migrations on start): NATS user
# aggregator, ClickHouse user drover_writer.
start aggregator "$RUN/aggregator.log" \
	DROVER_AGGREGATOR_METRICS_LISTEN="127.0.0.1:$AGG_METRICS" DROVER_REPLICA=aggregator \
	DROVER_NATS_USER=aggregator DROVER_NATS_PASSWORD="${secret[DROVER_NATS_AGGREGATOR_PASSWORD]}" \
	DROVER_CLICKHOUSE_USERNAME=drover_writer DROVER_CLICKHOUSE_PASSWORD="${secret[CLICKHOUSE_WRITER_PASSWORD]}" \
	"$BIN/drover-aggregator" "${config[@]}"
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
	start "drover-proxy-$i" "$RUN/proxy-$i.log" \
		DROVER_LISTEN="127.0.0.1:$p" DROVER_REPLICA="proxy-$i" DROVER_USAGE_SPOOL_DIR="$RUN/spool-$i" \
		DROVER_AUTH_KEYS="$auth_keys" DROVER_AUTH_STATE_FILE="$RUN/keys-$i.json" \
		DROVER_NATS_USER=proxy DROVER_NATS_PASSWORD="${secret[DROVER_NATS_PROXY_PASSWORD]}" \
		DROVER_CLICKHOUSE_USERNAME=drover_reader DROVER_CLICKHOUSE_PASSWORD="${secret[CLICKHOUSE_READER_PASSWORD]}" \
		"$BIN/drover-proxy" "${config[@]}"
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
$(if ((NATS_NODES == 1)); then
	echo "NATS                  $DROVER_NATS_URL   (monitoring http://127.0.0.1:$NATS_MON; users proxy and aggregator only)"
else
	echo "NATS                  ${nats_urls[0]}   (cluster of 3: $DROVER_NATS_URL; monitoring ports ${nats_mons[*]}; usage stream and buckets on all 3; users proxy and aggregator only)"
fi)
ClickHouse            $DROVER_CLICKHOUSE_ADDR (native)  http://127.0.0.1:$CH_HTTP  (data $CH_DIR; users drover_reader, drover_writer)

Every route but / and /health needs a key; the admin key manages the rest:
try:  export DROVERCTL_API_KEY=\$(sed -n 's/^DROVER_ADMIN_KEY=//p' $SECRETS)
      $BIN/droverctl status --url http://127.0.0.1:$PORT
      $BIN/droverctl keys create team-a --url http://127.0.0.1:$PORT     # a client key, printed once
      curl -H "Authorization: Bearer \$DROVERCTL_API_KEY" http://127.0.0.1:$PORT/api/chat -d '{"model":"tiny","messages":[{"role":"user","content":"hi"}]}'
      OPENAI_BASE_URL=http://127.0.0.1:$PORT/v1 OPENAI_API_KEY=<a key> ...   # OpenAI SDKs; Anthropic's: x-api-key
      DROVER_CLICKHOUSE_ADDR=$DROVER_CLICKHOUSE_ADDR DROVER_CLICKHOUSE_USERNAME=drover_reader \\
        DROVER_CLICKHOUSE_PASSWORD=\$(sed -n 's/^CLICKHOUSE_READER_PASSWORD=//p' $SECRETS) $BIN/droverctl usage
A service that dies is started again (see $RUN/run.log). Ctrl-C stops everything.
EOF
echo "ready" >"$RUN/ready"

if [[ -n ${DEMO:-} ]]; then
	DEMO_ADMIN_KEY=$ADMIN_KEY DROVER_CLICKHOUSE_USERNAME=drover_reader DROVER_CLICKHOUSE_PASSWORD=${secret[CLICKHOUSE_READER_PASSWORD]} \
		./deploy/local/demo.sh "http://127.0.0.1:$PORT" "$BIN" &
	demo_pid=$!
fi

# Until Ctrl-C or SIGTERM: a service that exits is started again after a
# backoff (0.5s, doubling with every exit in a row, at most 30s; the count
# starts afresh once it has run for 30s), the others keep running.
set +e
now_ms() { local t=${EPOCHREALTIME//[.,]/}; echo $((t / 1000)); }
timer=
while :; do
	now=$(now_ms) next= running=()
	for i in "${!pids[@]}"; do
		if [[ -z ${due[i]} ]]; then
			running+=("${pids[i]}")
		elif ((now >= due[i])); then
			printf -- '--- run.sh %s: started again (restart %d)\n' "$(date -u +%FT%TZ)" "${restarts[i]}" >>"${logs[i]}"
			launch "$i"
			due[i]=
			running+=("${pids[i]}")
			log "restarted ${names[i]} (pid ${pids[i]})"
		elif [[ -z $next ]] || ((due[i] < next)); then
			next=${due[i]}
		fi
	done
	timer=
	if [[ -n $next ]]; then
		d=$((next - now))
		sleep "$((d / 1000)).$(printf %03d $((d % 1000)))" &
		timer=$!
	fi
	died=
	wait -n -p died "${running[@]}" ${timer:+"$timer"}
	code=$?
	[[ -n $timer && $died != "$timer" ]] && kill "$timer" 2>/dev/null
	for i in "${!pids[@]}"; do
		[[ ${pids[i]} == "$died" && -z ${due[i]} ]] || continue
		up=$((EPOCHSECONDS - started[i]))
		((up >= 30)) && restarts[i]=0
		delay=$((500 << restarts[i]))
		((delay > 30000)) && delay=30000
		((restarts[i] < 10)) && restarts[i]=$((restarts[i] + 1))
		due[i]=$(($(now_ms) + delay))
		log "${names[i]} exited (status $code) after ${up}s; starting it again in $((delay / 1000)).$((delay % 1000 / 100))s (restart: unless-stopped; its log: ${logs[i]})"
	done
done
