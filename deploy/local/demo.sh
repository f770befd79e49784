#!/usr/bin/env bash
# make demo: traffic through the local stack (deploy/local/run.sh starts this
# when DEMO=1) and the fleet's token usage from ClickHouse every 15 seconds.
#
#   deploy/local/demo.sh URL BIN
set -uo pipefail
url=$1 bin=$2
models=(tiny tiny2)
keys=()
IFS=, read -ra pairs <<<"${DROVER_AUTH_KEYS:-}"
for p in "${pairs[@]}"; do keys+=("${p#*:}"); done
((${#keys[@]})) && export DROVERCTL_API_KEY=${keys[0]}

one() {
	local model=${models[RANDOM % ${#models[@]}]} auth=()
	((${#keys[@]})) && auth=(-H "Authorization: Bearer ${keys[RANDOM % ${#keys[@]}]}")
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
echo "demo: sending traffic to $url; usage every 15s"
while true; do
	sleep 15 &
	wait $!
	echo
	"$bin/droverctl" status --url "$url" 2>&1 | head -20
	echo
	"$bin/droverctl" usage --since 1h --group-by model,key 2>&1
done
