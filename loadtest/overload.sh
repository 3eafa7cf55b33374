#!/usr/bin/env bash
# Overload, one run, same load for every server: measure sluiceway's peak throughput (closed loop),
# then offer FACTOR x that as an open loop (Poisson) with a deadline on every request, against
# sluiceway, Triton via PyTriton and MLServer, interleaved. Prints goodput against the peak, late
# successes, how fast errors come back, compute spent on unused answers, and memory before/after.
#
#   bash loadtest/overload.sh resnet 8 out/overload-resnet   # compute-bound: peak at 8 in flight
#   bash loadtest/overload.sh mlp 64 out/overload-mlp        # transport-bound: peak at 64 in flight
#
# The deadline-feasible peak is also measured: the best closed-loop throughput, over FEASIBLE_LEVELS
# in flight, whose p99 latency stays within the deadline; goodput is reported against both peaks.
#
# Env: FACTOR (2), DEADLINE_MS (50), DURATION_S (6), ROUNDS (2), PROCESSES (client processes, 1),
# FEASIBLE_LEVELS (1,2,4,8), PEERS (1; 0: sluiceway alone), SLUICEWAY_ARGS (extra server flags,
# e.g. --idle-dispatch), QUEUE_DELAY_US (set: serve the demo models with this max_queue_delay).
set -euo pipefail
cd "$(dirname "$0")/.."
model=${1:-resnet}; peak_concurrency=${2:-8}; out=${3:-loadtest/results/overload-$model}
factor=${FACTOR:-2}; deadline_ms=${DEADLINE_MS:-50}; duration=${DURATION_S:-6}; rounds=${ROUNDS:-2}
processes=${PROCESSES:-1}
py=.venv/bin/python
mkdir -p "$out"
source loadtest/peers/launch.sh

repo_args=()
if [ -n "${QUEUE_DELAY_US:-}" ]; then  # the demo repository, each model with this queue delay
  demo=$($py -m server build-demo | tail -1); repo=$out/repository
  rm -rf "$repo"; mkdir -p "$repo"
  for dir in "$demo"/*/; do
    name=$(basename "$dir"); mkdir -p "$repo/$name/1"
    ln -s "$dir/1/model.onnx" "$repo/$name/1/model.onnx"
    sed "s/max_queue_delay_microseconds: [0-9]*/max_queue_delay_microseconds: $QUEUE_DELAY_US/" \
      "$dir/config.pbtxt" >"$repo/$name/config.pbtxt"
  done
  repo_args=(--model-repository "$repo")
fi
# shellcheck disable=SC2086  # SLUICEWAY_ARGS is a list of flags
launch sluiceway $py -m server serve --port 0 "${repo_args[@]}" ${SLUICEWAY_ARGS:-}
ours=$(port_of sluiceway "${pids[-1]}")
names=(sluiceway); targets="sluiceway=127.0.0.1:$ours/$model"
if [ "${PEERS:-1}" = 1 ]; then
  launch pytriton $py -m loadtest.peers.pytriton --model "$model" --port 0; triton=$(port_of pytriton "${pids[-1]}")
  launch mlserver $py -m loadtest.peers.mlserver --model "$model" --port 0
  mlserver=$(port_of mlserver "${pids[-1]}")
  names+=(triton mlserver)
  targets+=",triton=127.0.0.1:$triton/$model,mlserver=127.0.0.1:$mlserver/$model"
fi

.venv/bin/sluiceway-loadtest --target "127.0.0.1:$ours" --model "$model" \
  --concurrency "$peak_concurrency" --duration-s "$duration" --warmup-s 1 --processes "$processes" \
  --quiet --out "$out/peak"
rate=$($py -c "import json,sys; e=json.load(open(sys.argv[1]))['results'][0]; print(round($factor*e['throughput_rps']))" "$out/peak/results.json")
echo "sluiceway peak at $peak_concurrency in flight: see $out/peak; offering $rate req/s" >&2

memory() {  # memory LABEL: each server's resident memory (KiB, process tree)
  for i in "${!names[@]}"; do echo "${names[$i]} $1 $(rss_kib "${pids[$i]}")"; done >>"$out/memory.txt"
}
: >"$out/memory.txt"
memory before
.venv/bin/sluiceway-loadtest \
  --compare "$targets" \
  --model "$model" --rate "$rate" --deadline-ms "$deadline_ms" --rounds "$rounds" --duration-s "$duration" \
  --warmup-s 1 --processes "$processes" --quiet --out "$out/open"
memory after
# Last: a closed loop past the feasible concurrency retries every refusal at once, and the load it
# makes on two cores slows runs enough to raise the estimates the open loop would start from.
.venv/bin/sluiceway-loadtest --target "127.0.0.1:$ours" --model "$model" \
  --concurrency "${FEASIBLE_LEVELS:-1,2,4,8}" --deadline-ms "$deadline_ms" --duration-s "$duration" \
  --warmup-s 1 --processes "$processes" --quiet --out "$out/feasible"
$py -m loadtest.overload_table "$out/peak/results.json" "$out/open/results.json" "$out/memory.txt" \
  "$out/feasible/results.json" | tee "$out/table.md"
