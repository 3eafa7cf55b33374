#!/usr/bin/env bash
# Side by side on one machine, one run: sluiceway, the transport floor (bare grpc.aio + onnxruntime
# per request), Triton via PyTriton and MLServer, all serving the same demo model on 127.0.0.1,
# driven by the same harness scenario, interleaved a/b/c/d per step, ratios against sluiceway.
#
#   bash loadtest/compare_peers.sh mlp "1,16,64" out/mlp      # transport-bound
#   bash loadtest/compare_peers.sh resnet "1,4,8" out/resnet  # compute-bound
#
# Peers install into .cache/peers/ on first use (minutes). Every server is stopped at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
model=${1:-mlp}; levels=${2:-1,16,64}; out=${3:-loadtest/results/$model}
duration=${DURATION_S:-4}; rounds=${ROUNDS:-2}
py=.venv/bin/python
mkdir -p "$out"
source loadtest/peers/launch.sh

launch sluiceway $py -m server serve --port 0; ours=$(port_of sluiceway "${pids[-1]}")
launch floor $py -m loadtest.peers.floor --mode ort --model "$model" --port 0; floor=$(port_of floor "${pids[-1]}")
launch pytriton $py -m loadtest.peers.pytriton --model "$model" --port 0; triton=$(port_of pytriton "${pids[-1]}")
launch mlserver $py -m loadtest.peers.mlserver --model "$model" --port 0; mlserver=$(port_of mlserver "${pids[-1]}")

.venv/bin/sluiceway-loadtest \
  --compare "sluiceway=127.0.0.1:$ours/$model,floor=127.0.0.1:$floor/$model,triton=127.0.0.1:$triton/$model,mlserver=127.0.0.1:$mlserver/$model" \
  --model "$model" --concurrency "$levels" --rounds "$rounds" --duration-s "$duration" --warmup-s 1 \
  --processes 1 --quiet --out "$out"
$py -m loadtest.peers.limit --model "$model" --seconds 2 | tail -1 > "$out/limit.json"
cat "$out/limit.json"
