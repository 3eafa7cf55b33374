#!/usr/bin/env bash
# What Triton's default instance count does to a model whose config leaves `instance_group` out:
# since the forty-fifth session such a model gets 2 CPU instances (Triton's onnxruntime count), 1
# before. One server, three models on each demo ONNX file (mlp, resnet), interleaved in one run,
# closed loop at 1, 16 and 64 in flight: `default` leaves instance_group out (2 instances), `one`
# adds `instance_group [ { count: 1 kind: KIND_CPU } ]`, `split` leaves it out and sets
# intra_op_thread_count 1 (2 instances of one thread each). The first two leave the thread count
# to onnxruntime (one thread per core), as a config written for Triton does.
#
#   bash loadtest/instance_defaults.sh [OUT]     # default loadtest/results/instance-defaults
#
# Env: DURATION_S (3), ROUNDS (2), CONCURRENCY (1,16,64), MODELS ("mlp resnet").
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-loadtest/results/instance-defaults}
duration=${DURATION_S:-3}; rounds=${ROUNDS:-2}; concurrency=${CONCURRENCY:-1,16,64}
models=${MODELS:-mlp resnet}
py=.venv/bin/python
mkdir -p "$out"
source loadtest/peers/launch.sh

scratch_demo_repo
declare -A max_batch=([mlp]=128 [resnet]=16)
for model in $models; do
  for copy in default one split; do
    mkdir -p "$repo/${model}_$copy/1"
    ln -s "$demo/$model/1/model.onnx" "$repo/${model}_$copy/1/model.onnx"
    printf 'max_batch_size: %s\ndynamic_batching { max_queue_delay_microseconds: 0 }\n' \
      "${max_batch[$model]}" >"$repo/${model}_$copy/config.pbtxt"
  done
  echo 'instance_group [ { count: 1 kind: KIND_CPU } ]' >>"$repo/${model}_one/config.pbtxt"
  echo 'parameters { key: "intra_op_thread_count" value { string_value: "1" } }' >>"$repo/${model}_split/config.pbtxt"
done

launch sluiceway $py -m server serve --port 0 --model-repository "$repo"; port=$(port_of sluiceway "${pids[-1]}")
for model in $models; do
  targets="default=127.0.0.1:$port/${model}_default,one=127.0.0.1:$port/${model}_one"
  targets+=",split=127.0.0.1:$port/${model}_split"
  .venv/bin/sluiceway-loadtest --compare "$targets" --model "${model}_default" --concurrency "$concurrency" \
    --rounds "$rounds" --duration-s "$duration" --warmup-s 1 --processes 1 --quiet --out "$out/$model"
  $py -m loadtest.result_lines "$out/$model/results.json" "$model"
done
