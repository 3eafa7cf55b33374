#!/usr/bin/env bash
# From nothing: install into .venv, then lint, type-check and run every test.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy batcher clients server loadtest
# tritonclient's generated modules define the same protobuf package (`inference`) as ours, so the
# tests that import them run in a pytest process of their own.
.venv/bin/python -m pytest -q tests/unit tests/integration "$@"
.venv/bin/python -m pytest -q tests/triton "$@"
