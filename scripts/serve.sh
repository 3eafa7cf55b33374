#!/usr/bin/env bash
# Install everything, build the demo models locally, serve them on 127.0.0.1:8001.
# Extra arguments go to `sluiceway serve` (e.g. --model-repository DIR, --port 9001).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
exec .venv/bin/sluiceway serve "$@"
