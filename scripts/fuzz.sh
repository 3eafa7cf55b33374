#!/usr/bin/env bash
# Fuzz request decoding and validation for a bounded time: raw bytes -> ModelInferRequest ->
# decode, validate, request parameters and the admission record, the server's own path
# (tests/support/fuzz_target.py). Any error but a client status (INVALID_ARGUMENT and the like) is
# a failure. The unit tests run the same target briefly (tests/unit/test_fuzz_decode.py).
#
#   bash scripts/fuzz.sh                     # 10 minutes, atheris over raw bytes
#   bash scripts/fuzz.sh 3600                # an hour
#   bash scripts/fuzz.sh 600 structured      # atheris drives the near-valid request strategy
#
# atheris (coverage-guided, libFuzzer) is installed into .venv on first use; where it does not
# install (no wheel for this Python), hypothesis runs the same targets until the time is up.
# Work (corpus, crashing inputs) goes to .cache/fuzz/ (git-ignored). Exits 1 on the first failure.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-600}
mode=${2:-bytes}
ATHERIS_VERSION=3.0.0
[ -x .venv/bin/python ] || bash scripts/bootstrap.sh
if ! .venv/bin/python -c 'import atheris' 2>/dev/null; then
  .venv/bin/python -m pip install -q "atheris==$ATHERIS_VERSION" ||
    echo "atheris $ATHERIS_VERSION did not install here: fuzzing with hypothesis instead"
fi
# The run ends by itself after $seconds; the outer timeout only guards against a hang.
HYPOTHESIS_PROFILE=long exec timeout --kill-after=30 $((seconds + 300)) \
  .venv/bin/python -m tests.support.fuzz_main "$seconds" "$mode"
