#!/usr/bin/env bash
# Same-run A/B of two flag sets: two servers from the working tree (demo models), one interleaved
# scenario, ratios over A. E.g. metrics off (A) against on (B), B's /metrics scraped every second:
#
#   A_ARGS=--no-metrics SCRAPE_S=1 bash loadtest/ab_flags.sh mlp "1,16"
#
# Env: A_ARGS, B_ARGS (flags of each server), SCRAPE_S (scrape each server that serves /metrics this
# often while the scenario runs; 0: never), DURATION_S (5), ROUNDS (3), PROCESSES (client processes, 1).
set -euo pipefail
cd "$(dirname "$0")/.."
model=${1:-mlp}; levels=${2:-1,16}; out=${3:-loadtest/results/ab-flags-$model}
duration=${DURATION_S:-5}; rounds=${ROUNDS:-3}; processes=${PROCESSES:-1}; scrape=${SCRAPE_S:-0}
py=$PWD/.venv/bin/python
mkdir -p "$out"
out=$(cd "$out" && pwd)
source loadtest/peers/launch.sh

# shellcheck disable=SC2086  # *_ARGS are lists of flags
launch a $py -m server serve --port 0 --metrics-port 0 ${A_ARGS:-}; a=$(port_of a "${pids[-1]}")
# shellcheck disable=SC2086
launch b $py -m server serve --port 0 --metrics-port 0 ${B_ARGS:-}; b=$(port_of b "${pids[-1]}")
if [ "$scrape" != 0 ]; then
  for name in a b; do
    url=$(grep -oE 'metrics on 127\.0\.0\.1:[0-9]+/metrics' "$out/$name.log" | head -1 | cut -d' ' -f3 || true)
    [ -n "$url" ] || continue
    (while curl -sf "http://$url" >/dev/null; do sleep "$scrape"; done) &
    pids+=($!)
  done
fi

.venv/bin/sluiceway-loadtest --compare "a=127.0.0.1:$a/$model,b=127.0.0.1:$b/$model" \
  --model "$model" --concurrency "$levels" --rounds "$rounds" --duration-s "$duration" --warmup-s 1 \
  --processes "$processes" --quiet --out "$out"
$py - "$out/results.json" <<'PY'
import json, sys
for r in json.load(open(sys.argv[1]))["results"]:
    lat = r["latency_us"]
    print(f"{r['step']['mode']} {r['step']['level']:>4} {r['target']:>4}: {r['throughput_ips']:10.1f} inf/s"
          f"  p50 {lat['p50'] / 1e3:7.2f} ms  p99 {lat['p99'] / 1e3:7.2f} ms"
          f"  ratio {r['ratios']['throughput_rps']:.3f}  per round {r.get('throughput_per_round')}")
PY
