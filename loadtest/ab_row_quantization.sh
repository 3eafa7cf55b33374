#!/usr/bin/env bash
# What per-row dynamic quantization costs (server/backends/row_quantization.py): the demo MLP
# quantized by onnxruntime's quantize_dynamic, served twice by one server, per batch (the model as
# written: `dynamic_quantization: per_batch`) and per row (the default where requests batch); one
# interleaved scenario, ratios of per row over per batch:
#
#   bash loadtest/ab_row_quantization.sh "1,16,64"
#
# Env: DURATION_S (5), ROUNDS (3). The same on raw onnxruntime, no server: loadtest/row_quantization_raw.py.
set -euo pipefail
cd "$(dirname "$0")/.."
levels=${1:-1,16,64}; out=${2:-loadtest/results/ab-row-quantization}
duration=${DURATION_S:-5}; rounds=${ROUNDS:-3}
py=$PWD/.venv/bin/python
mkdir -p "$out/repo"
out=$(cd "$out" && pwd)
source loadtest/peers/launch.sh

$py - "$out/repo" <<'PY'
import logging, sys
from pathlib import Path
from onnxruntime.quantization import QuantType, quantize_dynamic
from server.models.demo import build_mlp
logging.getLogger().setLevel(logging.ERROR)
repo = Path(sys.argv[1])
(repo / "mlp.onnx").write_bytes(build_mlp())
for name, how in (("per_batch", "per_batch"), ("per_row", "per_row")):
    (repo / name / "1").mkdir(parents=True, exist_ok=True)
    quantize_dynamic(repo / "mlp.onnx", repo / name / "1" / "model.onnx", weight_type=QuantType.QInt8)
    (repo / name / "config.pbtxt").write_text(
        "max_batch_size: 64\ndynamic_batching {}\n"
        f'parameters {{ key: "dynamic_quantization" value {{ string_value: "{how}" }} }}\n'
    )
PY
launch server $py -m server serve --port 0 --metrics-port 0 --model-repository "$out/repo"
port=$(port_of server "${pids[-1]}")
grep -h "dynamic quantization" "$out/server.log" || true

.venv/bin/sluiceway-loadtest --compare "per_batch=127.0.0.1:$port/per_batch,per_row=127.0.0.1:$port/per_row" \
  --model per_batch --concurrency "$levels" --rounds "$rounds" --duration-s "$duration" \
  --warmup-s 1 --quiet --out "$out"
$py - "$out/results.json" <<'PY'
import json, sys
for r in json.load(open(sys.argv[1]))["results"]:
    lat = r["latency_us"]
    print(f"{r['step']['mode']} {r['step']['level']:>4} {r['target']:>9}: {r['throughput_ips']:10.1f} inf/s"
          f"  p50 {lat['p50'] / 1e3:7.2f} ms  p99 {lat['p99'] / 1e3:7.2f} ms"
          f"  ratio {r['ratios']['throughput_rps']:.3f}  per round {r.get('throughput_per_round')}")
PY
