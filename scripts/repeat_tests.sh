#!/usr/bin/env bash
# Hunt for order- and load-dependent failures: the test command's two phases (scripts/test_phases.sh:
# files over the workers, then the `serial` ones alone), N times (default 5) on each Python venv that
# exists, each time with a fresh random order. Prints the seed of every run and pytest's summary and
# failures; `bash scripts/test.sh --randomly-seed=SEED` repeats an order. Run scripts/test.sh once
# first (it makes the venvs). About 4.5 minutes per run and Python on 2 cores.
set -uo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/test_phases.sh
source scripts/test_phases.sh
runs=${1:-5}
failed=0
for i in $(seq 1 "$runs"); do
  for venv in .venv-3.13 .venv-3.10; do
    [ -x "$venv/bin/python" ] || continue
    seed=$((RANDOM * 32768 + RANDOM))
    echo "== run $i $venv seed $seed $(date +%T)"
    rc=0
    out=$(run_tests "$venv" -p randomly --randomly-seed="$seed" 2>&1) || rc=$?
    [ "$rc" = 0 ] || failed=$((failed + 1))
    grep -E "^(FAILED|ERROR)|passed|failed" <<<"$out"
  done
done
echo "== runs failed: $failed"
[ "$failed" = 0 ]
