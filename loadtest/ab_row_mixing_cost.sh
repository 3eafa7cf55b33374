#!/usr/bin/env bash
# The reading of ops that mix rows timed at an earlier commit (a temporary git worktree) and in the
# working tree, interleaved twice, with this venv: loadtest/row_mixing_cost.py on each model.
#
#   bash loadtest/ab_row_mixing_cost.sh REF MODEL.onnx [MODEL.onnx ...]
set -euo pipefail
cd "$(dirname "$0")/.."
ref=$1; shift
py=$PWD/.venv/bin/python
tree=$(mktemp -d)
git worktree add -q --detach "$tree/a" "$ref"
trap 'git worktree remove --force "$tree/a"; rm -rf "$tree"' EXIT
models=()
for model in "$@"; do models+=("$(cd "$(dirname "$model")" && pwd)/$(basename "$model")"); done
for round in 1 2; do
  echo "round $round: $ref"; (cd "$tree/a" && $py - "${models[@]}" <"$OLDPWD/loadtest/row_mixing_cost.py")
  echo "round $round: working tree"; $py -m loadtest.row_mixing_cost "${models[@]}"
done
