#!/usr/bin/env bash
# Create a virtual environment (if missing) and install sluiceway with its test tools into it.
# Idempotent. Usage: bootstrap.sh [PYTHON [VENV]]; by default python3 and .venv.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${1:-python3}
venv=${2:-.venv}
if [ ! -x "$venv/bin/python" ]; then
  "$python" -m venv "$venv"
fi
"$venv/bin/python" -m pip install -q --upgrade pip
# The CPU runtime (extra `cpu`); the GPU one is the alternative, never beside it (README "Installing").
"$venv/bin/python" -m pip install -q -e ".[cpu,test]"
# Silero VAD's ONNX file for tests/integration/test_vad.py and examples/vad/; --no-deps: the
# package depends on torch, which neither needs.
"$venv/bin/python" -m pip install -q --no-deps "silero-vad>=5"
