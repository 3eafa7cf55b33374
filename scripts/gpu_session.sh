#!/usr/bin/env bash
# Issue 15's next device call, prepared: the GPU check three ways on one machine, in one call, so
# that served resnet over raw's best batch is compared within a machine (raw's best moved 8,144 -
# 10,036 rows/s between runs on one machine in session 37):
#
#   shared   8 server workers, their GPU sessions in the session host (--shared-sessions=gpu,
#            --max-batches-in-flight=2): one CUDA context, the workers' batches merged;
#            the GPU tests run here (they hold the shared-session test); and perf_analyzer on
#            resnet, over the wire and through system shared memory (every worker's regions):
#            the 602 KB inputs off the wire, where the workers' intake was the limit
#   host     the session host alone (loadtest/host_ceiling.py, the CUDA provider): 8 stand-in
#            workers send resnet-sized batches of 1, 8 and 32 rows of a model that costs nothing,
#            no gRPC: the rows a second one host can take in, gather into pinned memory and copy
#            to the device, and its CPU a row (bounds what `shared` can reach)
#   workers  8 server workers, each its own CUDA context (session 37's run C: 0.46 of raw)
#   mps      the same under NVIDIA's MPS daemon (GPU_CHECK_MPS=1): contexts at once, not in turn
#
# Each step but `host` is scripts/gpu_check.sh with 8 client processes and the CUDA provider only, in
# OUT/<step>; perf_analyzer in the first step only (it stalled against 8 workers in session 37, at
# 64 in flight over the wire; its points are time-boxed); its log lines go to
# OUT/session.log. The whole call is bounded by GPU_SESSION_LIMIT_S (520 s: under the device
# tool's 600 s a call, with the machine's start and the wheelhouse carries before it); a step
# starts only with 60 s left, and gets at most its share. The wheelhouse: GPU_CHECK_WHEELHOUSE
# (/tmp/wh, where the carry calls of README "Run on an H200" copy it).
#
#   bash scripts/gpu_session.sh [OUT]      # default $OUT
#   GPU_SESSION_STEPS="shared workers" ... # a subset, in that order
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-${OUT:?give OUT or a folder}}
mkdir -p "$out"
budget=${GPU_SESSION_LIMIT_S:-520}
check=${GPU_SESSION_CHECK:-scripts/gpu_check.sh} # (the tests' stand-in)
began=$(date +%s)
log="$out/session.log"

common=(
  "GPU_CHECK_WHEELHOUSE=${GPU_CHECK_WHEELHOUSE:-/tmp/wh}" GPU_CHECK_SYSTEM_SITE=1
  GPU_CHECK_PROVIDERS=cuda GPU_CHECK_SERVER_WORKERS=8 GPU_CHECK_CLIENT_PROCESSES=8
)

run_step() { # NAME MAX_S VAR=VALUE...: one check, bounded by its share and what is left
  local name=$1 most=$2
  shift 2
  local left=$((budget - ($(date +%s) - began)))
  if [ "$left" -lt 60 ]; then
    echo "$name: not run, $left s left of GPU_SESSION_LIMIT_S=$budget" | tee -a "$log"
    return
  fi
  local limit=$((most < left ? most : left))
  echo "$name: GPU_CHECK_LIMIT_S=$limit $*" | tee -a "$log"
  env "${common[@]}" "$@" GPU_CHECK_LIMIT_S="$limit" bash "$check" "$out/$name" >>"$log" 2>&1
  echo "$name: exit $? after $(($(date +%s) - began)) s of the call" | tee -a "$log"
}

host_step() { # MAX_S: host_ceiling in the venv the check made (shared's), bounded like a step
  local left=$((budget - ($(date +%s) - began))) python=${GPU_SESSION_PYTHON:-.venv-gpu/bin/python}
  if [ "$left" -lt 60 ] || [ ! -x "$python" ]; then
    echo "host: not run ($left s left of GPU_SESSION_LIMIT_S=$budget; $python)" | tee -a "$log"
    return
  fi
  local limit=$(($1 < left ? $1 : left))
  mkdir -p "$out/host"
  echo "host: host_ceiling --provider cuda, at most $limit s" | tee -a "$log"
  timeout -k 5 "$limit" "$python" -m loadtest.host_ceiling --provider cuda --drivers 8 --threads 2 \
    --rows 1,8,32 --seconds 3 >"$out/host/host_ceiling.txt" 2>>"$log"
  echo "host: exit $? after $(($(date +%s) - began)) s of the call" | tee -a "$log"
}

for step in ${GPU_SESSION_STEPS:-shared host workers mps}; do
  case $step in
    shared)
      run_step shared 280 GPU_CHECK_SERVER_ARGS="--shared-sessions=gpu --max-batches-in-flight=2" \
        GPU_CHECK_PA_MODELS=resnet
      ;;
    host) host_step 60 ;;
    workers) run_step workers 95 GPU_CHECK_TESTS=0 GPU_CHECK_PERF_ANALYZER=0 ;;
    mps) run_step mps 85 GPU_CHECK_TESTS=0 GPU_CHECK_MPS=1 GPU_CHECK_PERF_ANALYZER=0 ;;
    *) echo "GPU_SESSION_STEPS: '$step' is not one of shared, host, workers, mps" | tee -a "$log" ;;
  esac
done
# The three tables' served resnet rows side by side, for the closing note.
grep -h "^| resnet |" "$out"/*/gpu_check.md 2>/dev/null | head -40 >"$out/resnet_rows.md" || true
echo "done after $(($(date +%s) - began)) s: $out/session.log, $out/*/gpu_check.md, $out/host/host_ceiling.txt" | tee -a "$log"
