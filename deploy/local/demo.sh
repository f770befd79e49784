#!/usr/bin/env bash
# make demo: traffic through the local stack (deploy/local/run.sh starts this
# when DEMO=1) and the fleet's token usage from ClickHouse every 15 seconds.
# Traffic goes with the client keys of DROVER_AUTH_KEYS (id:key[:role],...;
# make demo's team-a and team-b); droverctl status with the admin key
# (DEMO_ADMIN_KEY); droverctl usage reads ClickHouse as the DROVER_CLICKHOUSE_
# user run.sh hands over.
#
#   deploy/local/demo.sh URL BIN
set -uo pipefail
url=$1 bin=$2
models=(tiny tiny2)
keys=()
IFS=, read -ra items <<<"${DROVER_AUTH_KEYS:-}"
for item in "${items[@]}"; do
	key=${item#*:}
	case $key in *:admin) continue ;; *:client) key=${key%:client} ;; esac
	keys+=("$key")
done
((${#keys[@]})) || keys=("${DEMO_ADMIN_KEY:?run by run.sh, which sets it}")
export DROVERCTL_API_KEY=${DEMO_ADMIN_KEY:?run by run.sh, which sets it}
unset DEMO_ADMIN_KEY

one() {
	local model=${models[RANDOM % ${#models[@]}]}
	local auth=(-H "Authorization: Bearer ${keys[RANDOM % ${#keys[@]}]}")
	case $((RANDOM % 3)) in
	0) curl -fsS -o /dev/null "${auth[@]}" "$url/api/chat" -d "{\"model\":\"$model\",\"messages\":[{\"role\":\"user\",\"content\":\"tell me about herds\"}]}" ;;
	1) curl -fsS -o /dev/null "${auth[@]}" "$url/api/generate" -d "{\"model\":\"$model\",\"prompt\":\"why is the sky blue\",\"stream\":false}" ;;
	2) curl -fsS -o /dev/null "${auth[@]}" "$url/v1/chat/completions" -d "{\"model\":\"$model\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"stream\":true}" ;;
	esac
}

traffic() {
	while true; do
		for _ in 1 2 3 4; do one & done
		wait
		sleep 0.2
	done
}
traffic &
tpid=$!
trap 'kill $tpid 2>/dev/null; wait $tpid 2>/dev/null; exit 0' TERM INT
echo "demo: sending traffic to $url with ${#keys[@]} key(s); usage every 15s"
while true; do
	sleep 15 &
	wait $!
	echo
	"$bin/droverctl" status --url "$url" 2>&1 | head -20
	echo
	"$bin/droverctl" usage --since 1h --group-by model,key 2>&1
done
