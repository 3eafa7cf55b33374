#!/usr/bin/env bash
# Triton's qa/L0_batcher/batcher_test.py against sluiceway, gRPC only, everything on 127.0.0.1.
# A measurement: prints a table (test, FIXED/VARIABLE, pass/fail/error/..., cause) and totals, and
# exits 0 even when tests fail. Nothing is downloaded: TRITON is a triton-inference-server/server
# git mirror (bare is fine) or checkout that you fetched beforehand (see README.md).
#
#   bash loadtest/triton_qa/run_l0_batcher.sh TRITON [options]
#   bash loadtest/triton_qa/run_l0_batcher.sh TRITON --server-src /tmp/slw_stable --out /tmp/l0
#   bash loadtest/triton_qa/run_l0_batcher.sh TRITON --tests test_multi_same_output0 --types FIXED
#   bash loadtest/triton_qa/run_l0_batcher.sh --list
#
# Options (all passed to l0_batcher.py; --help lists them): --server-src DIR (run `python -m server`
# from a copy, e.g. a clone of HEAD), --out DIR, --work DIR, --tests a,b, --types FIXED,VARIABLE,
# --include-delay, --test-timeout S (150), --start-timeout S, --server-arg ARG.
# Env: TRITON_SERVER_REPO instead of the TRITON argument; PYTHON (.venv/bin/python);
# L0_TOTAL_TIMEOUT_S bounds the whole run (3600).
set -euo pipefail
cd "$(dirname "$0")/../.."
py=${PYTHON:-.venv/bin/python}
args=()
if [[ $# -gt 0 && $1 != -* ]]; then
  args+=(--triton "$1")
  shift
fi
# SIGTERM on timeout: l0_batcher.py then stops the server it started before exiting.
exec timeout --kill-after=60 "${L0_TOTAL_TIMEOUT_S:-3600}" "$py" loadtest/triton_qa/l0_batcher.py "${args[@]}" "$@"
