#!/usr/bin/env bash
# Create a virtual environment (if missing) and install sluiceway with its test tools into it.
# Idempotent. Usage: bootstrap.sh [PYTHON [VENV]]; by default python3 and .venv.
# The installs go through uv (Astral's installer, from PyPI, pinned below), put into the venv by
# pip: a fresh venv took 23 s with an empty uv cache against 71 s with pip, and the test command
# makes two (README "The test command's time"). It installs the same versions pip picks. Where uv
# cannot be installed or an install with it fails, pip does that install instead, saying so;
# SLUICEWAY_INSTALLER=pip makes pip do them all.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${1:-python3}
venv=${2:-.venv}
UV_PIN="uv==0.13.9"
if [ ! -x "$venv/bin/python" ]; then
  "$python" -m venv "$venv"
fi

uv=""
if [ "${SLUICEWAY_INSTALLER:-uv}" != pip ]; then
  if [ -x "$venv/bin/uv" ] || "$venv/bin/python" -m pip install -q --disable-pip-version-check "$UV_PIN"; then
    uv="$venv/bin/uv"
  else
    echo "bootstrap: uv could not be installed; installing with pip" >&2
  fi
fi

# install ARGS...: `pip install ARGS` into the venv, by uv while it works (after a failure, pip).
install() {
  # UV_SYSTEM_CERTS: the machine's certificate store, as pip is configured to use here.
  if [ -n "$uv" ] && UV_SYSTEM_CERTS=1 "$uv" pip install -q --python "$venv/bin/python" "$@"; then
    return 0
  fi
  if [ -n "$uv" ]; then
    echo "bootstrap: uv failed to install $*; pip installs the rest" >&2
    uv=""
  fi
  "$venv/bin/python" -m pip install -q --disable-pip-version-check "$@"
}

# pip itself stays in the venv, current: tests/integration/test_extras_resolve.py asks it.
install --upgrade pip
# The CPU runtime (extra `cpu`); the GPU one is the alternative, never beside it (README "Installing").
install -e ".[cpu,test]"
# Silero VAD's ONNX file for tests/integration/test_vad.py and examples/vad/; --no-deps: the
# package depends on torch, which neither needs.
install --no-deps "silero-vad>=5"
