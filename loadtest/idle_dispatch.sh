#!/usr/bin/env bash
# Lone-request latency on a 2-instance model with a max_queue_delay, Triton's rules against idle
# dispatch, in one server (two models on the same ONNX file, one with the `idle_dispatch`
# parameter), interleaved: closed loop at 1 in flight, without and with a request deadline.
#
#   bash loadtest/idle_dispatch.sh [DELAY_US] [OUT]     # default 200000 (200 ms)
#
# Env: DURATION_S (4), ROUNDS (2), DEADLINE_MS (100).
set -euo pipefail
cd "$(dirname "$0")/.."
delay_us=${1:-200000}; out=${2:-loadtest/results/idle-dispatch}
duration=${DURATION_S:-4}; rounds=${ROUNDS:-2}; deadline_ms=${DEADLINE_MS:-100}
py=.venv/bin/python
mkdir -p "$out"
source loadtest/peers/launch.sh

scratch_demo_repo
for name in wait idle; do
  mkdir -p "$repo/mlp_$name/1"
  ln -s "$demo/mlp/1/model.onnx" "$repo/mlp_$name/1/model.onnx"
  cat >"$repo/mlp_$name/config.pbtxt" <<CONFIG
max_batch_size: 128
dynamic_batching { max_queue_delay_microseconds: $delay_us }
instance_group [ { count: 2 kind: KIND_CPU } ]
CONFIG
done
echo 'parameters { key: "idle_dispatch" value { string_value: "true" } }' >>"$repo/mlp_idle/config.pbtxt"

launch sluiceway $py -m server serve --port 0 --model-repository "$repo"; port=$(port_of sluiceway "${pids[-1]}")
targets="triton_rules=127.0.0.1:$port/mlp_wait,idle_dispatch=127.0.0.1:$port/mlp_idle"
common=(--compare "$targets" --model mlp_wait --concurrency 1 --rounds "$rounds" --duration-s "$duration"
  --warmup-s 1 --processes 1 --quiet)
.venv/bin/sluiceway-loadtest "${common[@]}" --out "$out/no-deadline"
.venv/bin/sluiceway-loadtest "${common[@]}" --deadline-ms "$deadline_ms" --out "$out/deadline-${deadline_ms}ms"
for run in no-deadline "deadline-${deadline_ms}ms"; do
  $py -m loadtest.result_lines "$out/$run/results.json" "$run"
done
