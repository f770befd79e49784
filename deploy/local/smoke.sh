#!/usr/bin/env bash
# CI smoke test of the local stack (deploy/local/run.sh), end to end: start
# it in a fresh state directory (run.sh generates every secret), send
# requests of every kind through the load balancer with two client keys,
# check droverctl status / cache invalidate / pull against it with the admin
# key, check what is locked (anonymous /health says one word, a client key
# gets 403 on /api/pull, NATS refuses an anonymous connection, ClickHouse's
# reader cannot write), wait until ClickHouse (droverctl usage --json, as
# drover_reader) holds exactly the tokens the clients were told; kill -9 a
# proxy and check that run.sh starts it again and it serves; then send
# SIGTERM to the stack's whole process group, its output pipe's reader
# included (as when make run | tee is stopped), and check that every
# process it started is gone.
#
#   deploy/local/smoke.sh            (make smoke)
#   NATS_CLUSTER=3 make smoke        the same on make run's three-node NATS,
#                                    plus its route login and a node's kill -9
set -euo pipefail
cd "$(dirname "$0")/../.."
export RUN_DIR=${RUN_DIR:-$(mktemp -d /tmp/drover-smoke.XXXXXX)}
PORT=${SMOKE_PORT:-22434}
BIN=${BIN:-./bin}
URL=http://127.0.0.1:$PORT
# Client keys; the admin key is run.sh's to generate.
export DROVER_AUTH_KEYS=smoke-a:smoke-key-aaaa,smoke-b:smoke-key-bbbb
unset DROVER_ADMIN_KEY DROVER_NATS_PROXY_PASSWORD DROVER_NATS_AGGREGATOR_PASSWORD \
	CLICKHOUSE_READER_PASSWORD CLICKHOUSE_WRITER_PASSWORD
N=${SMOKE_REQUESTS:-60}

if ! command -v jq >/dev/null; then
	sudo=()
	((EUID == 0)) || sudo=(sudo)
	"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
	"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq jq >/dev/null
fi

fail() {
	echo "smoke: FAIL: $*" >&2
	echo "--- run.sh output:" >&2
	tail -n 40 "$RUN_DIR/run.out" >&2 || true
	for f in "$RUN_DIR"/*.log; do
		echo "--- $f (tail):" >&2
		tail -n 15 "$f" >&2 || true
	done
	exit 1
}

# DROVER_PORT is run.sh's setting; droverctl below would refuse it.
# run.sh leads a process group of its own, with a reader of its output in
# it: the SIGTERM at the end goes to the whole group, as a terminal's or
# make's would.
DROVER_PORT=$PORT setsid bash -o pipefail -c './deploy/local/run.sh 2>&1 | cat >"$RUN_DIR/run.out"' &
stack=$!
stop_stack() {
	local runsh
	runsh=$(cat "$RUN_DIR/run.pid" 2>/dev/null) || true
	kill -TERM -- "-$stack" 2>/dev/null || true
	wait "$stack" 2>/dev/null || true
	# and for run.sh's stop of the services, which outlives the group's shell
	for _ in $(seq 1200); do
		[[ -n $runsh ]] && kill -0 "$runsh" 2>/dev/null || break
		sleep 0.1
	done
}
trap stop_stack EXIT

for _ in $(seq 300); do
	[[ -f $RUN_DIR/ready ]] && break
	kill -0 "$stack" 2>/dev/null || fail "run.sh exited during start-up"
	sleep 1
done
[[ -f $RUN_DIR/ready ]] || fail "the stack was not ready after 300s"
cat "$RUN_DIR/run.out"
CH_ADDR=$(sed -n 's/^ClickHouse *\([0-9.:]*\) (native).*/\1/p' "$RUN_DIR/run.out")
[[ -n $CH_ADDR ]] || fail "run.sh did not say where ClickHouse listens"
NATS_ADDR=$(sed -n 's|^NATS *nats://\([0-9.:]*\) .*|\1|p' "$RUN_DIR/run.out")
[[ -n $NATS_ADDR ]] || fail "run.sh did not say where NATS listens"
CH_HTTP=$(sed -n 's|^ClickHouse .*(native) *http://\([0-9.:]*\) .*|\1|p' "$RUN_DIR/run.out")

# The secrets run.sh generated: kept for restarts, readable by the owner
# only, and the admin key shown exactly once.
SECRETS=$RUN_DIR/secrets.env
[[ $(stat -c %a "$SECRETS") == 600 ]] || fail "$SECRETS has mode $(stat -c %a "$SECRETS"), want 600"
secret() { sed -n "s/^$1=//p" "$SECRETS"; }
ADMIN_KEY=$(secret DROVER_ADMIN_KEY)
((${#ADMIN_KEY} >= 32)) || fail "generated admin key is ${#ADMIN_KEY} characters"
[[ $(grep -c -- "$ADMIN_KEY" "$RUN_DIR/run.out") == 1 ]] || fail "the admin key was not printed exactly once"
READER_PASSWORD=$(secret CLICKHOUSE_READER_PASSWORD)
export DROVER_CLICKHOUSE_USERNAME=drover_reader DROVER_CLICKHOUSE_PASSWORD=$READER_PASSWORD

echo "smoke: $N requests through $URL"
# Each request's token counts as the client saw them, one "in out" line each.
counts=$RUN_DIR/client-tokens
: >"$counts"
key() { if (($1 % 2)); then echo smoke-key-aaaa; else echo smoke-key-bbbb; fi; }
for ((i = 0; i < N; i++)); do
	auth="Authorization: Bearer $(key "$i")"
	case $((i % 4)) in
	0) # Ollama, not streamed
		curl -fsS -H "$auth" "$URL/api/chat" \
			-d '{"model":"tiny","messages":[{"role":"user","content":"hello there"}],"stream":false}' |
			jq -r '"\(.prompt_eval_count) \(.eval_count)"' >>"$counts" ;;
	1) # Ollama, streamed: the counts are on the last line
		curl -fsS -N -H "$auth" "$URL/api/generate" -d '{"model":"tiny2","prompt":"why is the sky blue"}' |
			tail -n 1 | jq -r 'select(.done) | "\(.prompt_eval_count) \(.eval_count)"' >>"$counts" ;;
	2) # OpenAI, streamed with usage
		curl -fsS -N -H "$auth" "$URL/v1/chat/completions" \
			-d '{"model":"tiny","messages":[{"role":"user","content":"hi"}],"stream":true,"stream_options":{"include_usage":true}}' |
			sed -n 's/^data: //p' | grep -v '^\[DONE\]' | tail -n 1 |
			jq -r '"\(.usage.prompt_tokens) \(.usage.completion_tokens)"' >>"$counts" ;;
	3) # OpenAI, not streamed
		curl -fsS -H "$auth" "$URL/v1/chat/completions" \
			-d '{"model":"tiny2","messages":[{"role":"user","content":"a b c"}]}' |
			jq -r '"\(.usage.prompt_tokens) \(.usage.completion_tokens)"' >>"$counts" ;;
	esac || fail "request $i failed"
done
[[ $(wc -l <"$counts") -eq $N ]] || fail "$(wc -l <"$counts") of $N requests reported token counts"
grep -q null "$counts" && fail "a response had no token counts"
want=$(awk '{s += $1 + $2} END {print s}' "$counts")
echo "smoke: clients were told $want tokens"

# Without a key Drover answers 401; /health says one word to anyone; a
# client key may not manage models or keys.
code=$(curl -s -o /dev/null -w '%{http_code}' "$URL/api/chat" -d '{"model":"tiny","messages":[]}')
[[ $code == 401 ]] || fail "no key: got $code, want 401"
health=$(curl -fsS "$URL/health") || fail "anonymous /health failed"
jq -e '. == {"status": "ok"}' <<<"$health" >/dev/null || fail "anonymous /health says $health, want only {\"status\":\"ok\"}"
for route in "POST /api/pull" "DELETE /api/delete" "GET /api/keys"; do
	code=$(curl -s -o /dev/null -w '%{http_code}' -X "${route% *}" -H "Authorization: Bearer smoke-key-aaaa" \
		"$URL${route#* }" -d '{"model":"tiny"}')
	[[ $code == 403 ]] || fail "client key: $route got $code, want 403"
done
code=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $ADMIN_KEY" "$URL/api/config")
[[ $code == 200 ]] || fail "admin key: GET /api/config got $code, want 200"
echo "smoke: no key 401, anonymous /health one word, client key 403 on pull/delete/keys, admin key 200"

# NATS: anonymous and wrong passwords refused, the proxy's own login
# accepted (the control: the probe would see a success).
nats_login() { # CONNECT-options [address] -> the server's answer to CONNECT + PING
	local info reply addr=${2:-$NATS_ADDR}
	exec 3<>"/dev/tcp/${addr%:*}/${addr##*:}" || return 1
	IFS= read -r -t 5 info <&3
	printf 'CONNECT %s\r\nPING\r\n' "$1" >&3
	IFS= read -r -t 5 reply <&3
	exec 3<&- 3>&-
	printf '%s\n' "${reply%$'\r'}"
}
[[ $(nats_login '{"verbose":false}') == *"Authorization Violation"* ]] || fail "NATS accepted an anonymous connection"
[[ $(nats_login '{"verbose":false,"user":"proxy","pass":"wrong"}') == *"Authorization Violation"* ]] ||
	fail "NATS accepted a wrong password"
[[ $(nats_login "{\"verbose\":false,\"user\":\"proxy\",\"pass\":\"$(secret DROVER_NATS_PROXY_PASSWORD)\"}") == PONG ]] ||
	fail "NATS refused the proxy user's own password"
echo "smoke: NATS refuses anonymous and wrong-password connections, accepts the proxy's"

# ClickHouse: the proxies' user reads and may not write.
if [[ -n $CH_HTTP ]]; then
	out=$(curl -sS -u "drover_reader:$READER_PASSWORD" "http://$CH_HTTP/" --data-binary 'CREATE TABLE drover.smoke_intruder (x UInt8) ENGINE = Memory')
	[[ $out == *readonly* ]] || fail "drover_reader's CREATE TABLE answered $out, want refused as readonly"
	[[ $(curl -sS -u "drover_reader:$READER_PASSWORD" "http://$CH_HTTP/?query=SELECT%201") == 1 ]] || fail "drover_reader cannot SELECT"
	echo "smoke: ClickHouse's drover_reader reads and is refused CREATE TABLE"
else
	fail "run.sh did not say where ClickHouse's HTTP port is"
fi

export DROVERCTL_API_KEY=$ADMIN_KEY
"$BIN/droverctl" status --url "$URL" || fail "droverctl status"
"$BIN/droverctl" status --url "$URL" --json | jq -e '.health.status == "ok" and (.health.backends | length) == 2' >/dev/null ||
	fail "droverctl status --json: fleet not ok"
"$BIN/droverctl" cache invalidate --url "$URL" || fail "droverctl cache invalidate"
"$BIN/droverctl" pull tiny --url "$URL" || fail "droverctl pull"
"$BIN/droverctl" pull tiny --url "$URL" --json | tail -n 1 | jq -e '.status == "success"' >/dev/null ||
	fail "droverctl pull --json did not end in success"

echo "smoke: waiting for ClickHouse to hold $want tokens"
got=
for _ in $(seq 120); do
	got=$(DROVER_CLICKHOUSE_ADDR=$CH_ADDR "$BIN/droverctl" usage --since 1h --group-by key --json |
		jq '[.[] | select(.api_key | startswith("smoke-")) | .total_tokens] | add // 0') || true
	[[ $got == "$want" ]] && break
	sleep 0.5
done
[[ $got == "$want" ]] || fail "ClickHouse holds $got tokens, clients were told $want"
DROVER_CLICKHOUSE_ADDR=$CH_ADDR "$BIN/droverctl" usage --since 1h --group-by model,key
reqs=$(DROVER_CLICKHOUSE_ADDR=$CH_ADDR "$BIN/droverctl" usage --since 1h --model tiny --group-by '' --json | jq '.[0].requests')
((reqs >= N / 2)) || fail "ClickHouse counts $reqs requests for tiny, want at least $((N / 2))"

# NATS_CLUSTER=3 (make run's three-node NATS): routes take the route login
# only, and a node killed with -9 comes back and catches up: it holds the
# usage stream's writes made while it was away and after. (After the token
# count: this sends requests of its own.)
if [[ ${NATS_CLUSTER:-1} == 3 ]]; then
	route=127.0.0.1:$((PORT + 46))
	[[ $(nats_login '{"verbose":false}' "$route") == *"Authorization Violation"* ]] || fail "a NATS route port accepted a login without the route password"
	last_seqs() { # -> the USAGE stream's last sequence in each node's store, "-" where unknown
		local mon
		for mon in $((PORT + 41)) $((PORT + 43)) $((PORT + 45)); do
			curl -fsS -m 2 "http://127.0.0.1:$mon/jsz?streams=true&accounts=true" 2>/dev/null |
				jq -r '[.account_details[]?.stream_detail[]? | select(.name == "USAGE")][0].state.last_seq // "-"' || echo -
		done | paste -sd' '
	}
	one_request() {
		curl -fsS -o /dev/null -m 5 -H "Authorization: Bearer smoke-key-aaaa" "$URL/api/generate" \
			-d '{"model":"tiny","prompt":"again","stream":false}' || true
	}
	old=$(awk '$2 == "nats-2" {print $1}' "$RUN_DIR/pids")
	kill -KILL "$old"
	one_request # written while nats-2 is away
	ok= n=0 seqs=
	for _ in $(seq 300); do
		new=$(awk '$2 == "nats-2" {print $1}' "$RUN_DIR/pids")
		seqs=$(last_seqs)
		read -r s1 s2 s3 <<<"$seqs"
		if [[ $new != "$old" && $s1 != - && $s1 == "$s2" && $s2 == "$s3" ]] && ((n > 0)); then
			ok=1
			break
		fi
		# and one more after it is back
		[[ $new != "$old" ]] && ((n++ % 10 == 0)) && one_request
		sleep 0.2
	done
	[[ -n $ok ]] || fail "nats-2 did not come back and catch up after kill -9 (the usage stream's last sequence on each node: $seqs)"
	echo "smoke: NATS routes refuse a login without the route password; nats-2 came back after kill -9 and holds the usage stream up to the others (last sequence $s1)"
fi

# A proxy that dies is started again (restart: unless-stopped) and serves.
pid_of() { awk -v n="$1" '$2 == n {print $1}' "$RUN_DIR/pids"; }
P1_URL=$(sed -n 's|^  drover-proxy-1 *\(http://[0-9.:]*\) .*|\1|p' "$RUN_DIR/run.out")
[[ -n $P1_URL ]] || fail "run.sh did not say where drover-proxy-1 listens"
old=$(pid_of drover-proxy-1)
echo "smoke: kill -9 drover-proxy-1 (pid $old)"
kill -KILL "$old"
new=
for _ in $(seq 300); do
	new=$(pid_of drover-proxy-1)
	[[ -n $new && $new != "$old" ]] && curl -fsS -m 2 -o /dev/null "$P1_URL/" 2>/dev/null && break
	sleep 0.1
done
[[ -n $new && $new != "$old" ]] || fail "drover-proxy-1 was not started again after kill -9"
grep -q 'drover-proxy-1 exited (status 137).*starting it again' "$RUN_DIR/run.log" || fail "run.sh did not log the proxy's exit and restart"
out=$(curl -fsS -m 10 -H "Authorization: Bearer smoke-key-aaaa" "$P1_URL/api/chat" \
	-d '{"model":"tiny","messages":[{"role":"user","content":"again"}],"stream":false}') || fail "the restarted proxy does not serve"
jq -e '.done == true' <<<"$out" >/dev/null || fail "the restarted proxy answered $out"
echo "smoke: drover-proxy-1 is back (pid $new) and serves"

echo "smoke: SIGTERM to the stack's process group"
trap - EXIT
runsh=$(cat "$RUN_DIR/run.pid")
kill -TERM -- "-$stack"
start=$(date +%s)
wait "$stack" || true # the group's leader, a shell: it dies with the signal
# run.sh stops the services one by one (a proxy drains for up to 30s).
for _ in $(seq 1200); do
	kill -0 "$runsh" 2>/dev/null || break
	sleep 0.1
done
kill -0 "$runsh" 2>/dev/null && fail "run.sh still running 120s after SIGTERM"
echo "smoke: stopped in $(($(date +%s) - start))s"
while read -r pid name; do
	if kill -0 "$pid" 2>/dev/null; then
		fail "$name (pid $pid) still running after the stack stopped"
	fi
done <"$RUN_DIR/pids"
# The output's reader died with the signal: run.sh's own log has the stop,
# every service stopped in the reverse of its start order.
grep -q ' stopped$' "$RUN_DIR/run.log" || fail "run.sh did not report a clean stop"
want_order=$(awk '{print $2}' "$RUN_DIR/pids" | tac | paste -sd' ')
got_order=$(sed -n 's/^[^ ]*   stopped \(.*\)$/\1/p' "$RUN_DIR/run.log" | paste -sd' ')
[[ $got_order == "$want_order" ]] || fail "services stopped in the order '$got_order', want '$want_order'"
echo "smoke: OK"
rm -rf "$RUN_DIR"
