#!/usr/bin/env bash
# Overload, one run, same load for every server: measure sluiceway's peak throughput (closed loop),
# then offer FACTOR x that as an open loop (Poisson) with a deadline on every request, against
# sluiceway, Triton via PyTriton and MLServer, interleaved. Prints goodput against the peak, late
# successes, how fast errors come back, compute spent on unused answers, and memory before/after.
#
#   bash loadtest/overload.sh resnet 8 out/overload-resnet   # compute-bound: peak at 8 in flight
#   bash loadtest/overload.sh mlp 64 out/overload-mlp        # transport-bound: peak at 64 in flight
#
# Env: FACTOR (2), DEADLINE_MS (50), DURATION_S (6), ROUNDS (2), PROCESSES (client processes, 1).
set -euo pipefail
cd "$(dirname "$0")/.."
model=${1:-resnet}; peak_concurrency=${2:-8}; out=${3:-loadtest/results/overload-$model}
factor=${FACTOR:-2}; deadline_ms=${DEADLINE_MS:-50}; duration=${DURATION_S:-6}; rounds=${ROUNDS:-2}
processes=${PROCESSES:-1}
py=.venv/bin/python
mkdir -p "$out"
source loadtest/peers/launch.sh

launch sluiceway $py -m server serve --port 0; ours=$(port_of sluiceway "${pids[-1]}")
launch pytriton $py -m loadtest.peers.pytriton --model "$model" --port 0; triton=$(port_of pytriton "${pids[-1]}")
launch mlserver $py -m loadtest.peers.mlserver --model "$model" --port 0; mlserver=$(port_of mlserver "${pids[-1]}")
names=(sluiceway triton mlserver)

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
  --compare "sluiceway=127.0.0.1:$ours/$model,triton=127.0.0.1:$triton/$model,mlserver=127.0.0.1:$mlserver/$model" \
  --model "$model" --rate "$rate" --deadline-ms "$deadline_ms" --rounds "$rounds" --duration-s "$duration" \
  --warmup-s 1 --processes "$processes" --quiet --out "$out/open"
memory after
$py -m loadtest.overload_table "$out/peak/results.json" "$out/open/results.json" "$out/memory.txt" | tee "$out/table.md"
