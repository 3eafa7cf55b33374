#!/usr/bin/env bash
# From nothing: install into .venv (python3) and lint and type-check there; then run every test on
# the oldest and the newest Python the package supports (requires-python >= 3.10), each in a venv
# of its own (.venv-3.10, .venv-3.13; .venv itself where python3 is that version). A Python that
# is not on this machine is skipped with a message; with neither, the tests run in .venv.
# Extra arguments go to pytest. Tests run in random order (pytest-randomly) with a seed printed
# before each Python's runs: `bash scripts/test.sh --randomly-seed=N` repeats an order and
# `-p no:randomly` turns shuffling off. SLUICEWAY_TEST_WORKERS=N (default 2) spreads test files over
# N pytest workers (pytest-xdist; each file stays on one worker), then runs the files marked
# `serial` on their own: the drain, process and load-test tests race real servers or time them,
# and met CPU contention beside another worker that they never meet alone. 0 runs everything in one
# process, in one phase (use it when passing a -m of your own: the phases use -m).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHONS=(3.10 3.13)

# A working python$1 (e.g. 3.10): from PATH, else pyenv's versions; prints nothing if none works.
find_python() {
  local want=$1 candidate
  for candidate in "$(command -v "python$want" || true)" \
    "${PYENV_ROOT:-$HOME/.pyenv}"/versions/"$want".*/bin/"python$want"; do
    # pyenv's shims are on PATH for every version, but fail for one that is not selected.
    if [ -x "$candidate" ] && "$candidate" -c "import sys, venv, ensurepip
assert '%d.%d' % sys.version_info[:2] == '$want'" 2>/dev/null; then
      echo "$candidate"
      return 0
    fi
  done
  return 1
}

run_tests() {
  local venv=$1 order=()
  shift
  case " $* " in
    *randomly*) ;;  # the caller chose the order
    *) order=("--randomly-seed=$((RANDOM * 32768 + RANDOM))") ;;
  esac
  local workers=${SLUICEWAY_TEST_WORKERS:-2} rc=0
  echo "== tests on $("$venv/bin/python" --version) in $venv ${order[*]:-} (workers: $workers)"
  if [ "$workers" = 0 ]; then
    "$venv/bin/python" -m pytest -q tests "${order[@]}" "$@"
    return
  fi
  # Exit code 5 is "no test selected" (a -k of the caller's may leave a phase empty).
  "$venv/bin/python" -m pytest -q tests -n "$workers" --dist loadfile -m "not serial" "${order[@]}" "$@" || rc=$?
  [ "$rc" = 5 ] && rc=0
  echo "== the tests marked serial, alone"
  local serial_rc=0
  "$venv/bin/python" -m pytest -q tests -m serial "${order[@]}" "$@" || serial_rc=$?
  [ "$serial_rc" = 5 ] && serial_rc=0
  [ "$rc" = 0 ] && [ "$serial_rc" = 0 ]
}

bash scripts/bootstrap.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy batcher clients server loadtest

default=$(.venv/bin/python -c 'import sys; print("%d.%d" % sys.version_info[:2])')
ran=0
for version in "${PYTHONS[@]}"; do
  if [ "$version" = "$default" ]; then
    run_tests .venv "$@"
  elif python=$(find_python "$version"); then
    bash scripts/bootstrap.sh "$python" ".venv-$version"
    run_tests ".venv-$version" "$@"
  else
    echo "== SKIPPED: tests on Python $version (no working python$version on PATH or in pyenv's versions)"
    continue
  fi
  ran=$((ran + 1))
done
if [ "$ran" = 0 ]; then
  run_tests .venv "$@"
fi
