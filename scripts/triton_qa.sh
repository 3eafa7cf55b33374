#!/usr/bin/env bash
# Triton's own QA suites (ONNX, gRPC only) against this checkout; see CONFORMANCE.md.
#
#   bash scripts/triton_qa.sh PATH_TO_TRITON_SOURCE [--suites L0_infer,L0_batcher] [--out DIR] [--list]
#
# PATH_TO_TRITON_SOURCE: a checkout or git mirror (bare is fine) of triton-inference-server/server,
# fetched by you (nothing of Triton's is kept in this repository). The script makes a virtual
# environment (.venv-qa, or $QA_VENV) with this project and tritonclient[grpc,http] (the QA files
# import both clients; only gRPC is used), then runs `python -m loadtest.triton_qa.qa`: Triton's
# generators make the ONNX models, each suite's repositories are laid out as its test.sh does, a
# server is started per run on 127.0.0.1, and results.txt, summary.md and results.json are written
# to --out (default: a new temporary folder, printed). A measurement: it exits 0 with failing tests.
# $QA_TOTAL_TIMEOUT_S bounds the whole run (default 5400 s).
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ $# -lt 1 || $1 == -* ]]; then
  if [[ ${1:-} == --list ]]; then exec "${PYTHON:-.venv/bin/python}" -m loadtest.triton_qa.qa --list; fi
  echo "usage: bash scripts/triton_qa.sh PATH_TO_TRITON_SOURCE [--suites A,B] [--out DIR] [--list]" >&2
  exit 2
fi
triton=$1
shift
# The harness's own check of the path (loadtest/triton_qa/harness.py extract_qa), before the venv
# and pip install: a mistyped path had made .venv-qa and installed for minutes first.
rev=HEAD
for ((i = 1; i <= $#; i++)); do
  case ${!i} in
    --rev=*) rev=${!i#--rev=} ;;
    --rev) j=$((i + 1)); rev=${!j:-HEAD} ;;
  esac
done
if ! git --git-dir "$triton" rev-parse "$rev" >/dev/null 2>&1 &&
  ! git --git-dir "$triton/.git" rev-parse "$rev" >/dev/null 2>&1 &&
  [[ ! -f $triton/qa/common/gen_qa_models.py ]]; then
  echo "$triton: neither a git repository nor a Triton checkout with qa/common" >&2
  exit 2
fi
venv=${QA_VENV:-.venv-qa}
if [[ ! -x $venv/bin/python ]]; then
  python3 -m venv "$venv"
fi
"$venv/bin/python" -m pip install -q --upgrade pip
# onnx < 1.23: Triton's generators write models at the installed onnx's IR version, and the pinned
# onnxruntime (1.31.1, the `cpu` extra) reads IR 13 at most (onnx 1.23 writes IR 14).
"$venv/bin/python" -m pip install -q -e ".[cpu]" "tritonclient[grpc,http]>=2.60" "onnx>=1.16,<1.23"
exec timeout --kill-after=60 "${QA_TOTAL_TIMEOUT_S:-5400}" \
  "$venv/bin/python" -m loadtest.triton_qa.qa --triton "$triton" "$@"
