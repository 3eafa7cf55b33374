#!/usr/bin/env bash
# Hunt for order- and load-dependent failures: the test command's two phases (files over two
# workers, then the `serial` ones alone), N times (default 5) on each Python venv that exists, each
# time with a fresh random order. Prints the seed of every run and pytest's summary and failures;
# `bash scripts/test.sh --randomly-seed=SEED` repeats an order. Run scripts/test.sh once first (it
# makes the venvs). About 4.5 minutes per run and Python on 2 cores.
set -uo pipefail
cd "$(dirname "$0")/.."
runs=${1:-5}
failed=0
for i in $(seq 1 "$runs"); do
  for venv in .venv-3.13 .venv-3.10; do
    [ -x "$venv/bin/python" ] || continue
    seed=$((RANDOM * 32768 + RANDOM))
    echo "== run $i $venv seed $seed $(date +%T)"
    for phase in parallel serial; do
      if [ "$phase" = parallel ]; then args=(-n 2 --dist loadfile -m "not serial"); else args=(-m serial); fi
      rc=0
      out=$("$venv/bin/python" -m pytest -q tests "${args[@]}" -p randomly --randomly-seed="$seed" 2>&1) || rc=$?
      [ "$rc" = 0 ] || [ "$rc" = 5 ] || failed=$((failed + 1))  # 5: no test selected
      grep -E "^(FAILED|ERROR)|passed|failed" <<<"$out"
    done
  done
done
echo "== phases failed: $failed"
[ "$failed" = 0 ]
