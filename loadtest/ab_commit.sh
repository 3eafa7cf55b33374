#!/usr/bin/env bash
# Same-run A/B: the server at an earlier commit (a temporary git worktree, run with this venv)
# against the working tree's, both on the demo models, one interleaved scenario, ratios over A.
#
#   bash loadtest/ab_commit.sh REF MODEL LEVELS [OUT]     # e.g. 988bc78 mlp "16,64"
#
# Env: DURATION_S (5), ROUNDS (3), PROCESSES (client processes, 1), SERVER_ARGS (both servers).
set -euo pipefail
cd "$(dirname "$0")/.."
ref=$1; model=${2:-mlp}; levels=${3:-16,64}; out=${4:-loadtest/results/ab-$model}
duration=${DURATION_S:-5}; rounds=${ROUNDS:-3}; processes=${PROCESSES:-1}
py=$PWD/.venv/bin/python
mkdir -p "$out"
out=$(cd "$out" && pwd)
source loadtest/peers/launch.sh

tree=$(mktemp -d)
git worktree add -q --detach "$tree/a" "$ref"
trap 'cleanup; git worktree remove --force "$tree/a"; rm -rf "$tree"' EXIT
# shellcheck disable=SC2086  # SERVER_ARGS is a list of flags
# Metrics on free ports: both on the default 8002, the second server failed to start.
(cd "$tree/a" && exec $py -m server serve --port 0 --metrics-port 0 ${SERVER_ARGS:-}) >"$out/a.log" 2>&1 &
pids+=($!); a=$(port_of a "${pids[-1]}")
# shellcheck disable=SC2086
launch b $py -m server serve --port 0 --metrics-port 0 ${SERVER_ARGS:-}; b=$(port_of b "${pids[-1]}")

.venv/bin/sluiceway-loadtest --compare "a_$ref=127.0.0.1:$a/$model,b_worktree=127.0.0.1:$b/$model" \
  --model "$model" --concurrency "$levels" --rounds "$rounds" --duration-s "$duration" --warmup-s 1 \
  --processes "$processes" --quiet --out "$out"
$py - "$out/results.json" <<'PY'
import json, sys
for r in json.load(open(sys.argv[1]))["results"]:
    lat = r["latency_us"]
    print(f"{r['step']['mode']} {r['step']['level']:>4} {r['target']:>16}: {r['throughput_ips']:10.1f} inf/s"
          f"  p50 {lat['p50'] / 1e3:7.2f} ms  p99 {lat['p99'] / 1e3:7.2f} ms"
          f"  ratio {r['ratios']['throughput_rps']:.3f}  per round {r.get('throughput_per_round')}")
PY
