#!/usr/bin/env bash
# From nothing: run the tests on the oldest and the newest Python the package supports
# (requires-python >= 3.10; the two share the integration tests, below), each in a venv of its
# own (.venv-3.10, .venv-3.13; .venv itself where python3 is that version), after linting and
# type-checking in the newest one's. A Python that is not on this machine is skipped with a
# message; with neither, everything runs in .venv (python3).
# Extra arguments go to pytest. Tests run in random order (pytest-randomly) with a seed printed
# before each Python's runs: `bash scripts/test.sh --randomly-seed=N` repeats an order and
# `-p no:randomly` turns shuffling off. SLUICEWAY_TEST_WORKERS=N (default 3) spreads test files over
# N pytest workers (pytest-xdist; each file stays on one worker), then runs the files marked
# `serial` on their own: the drain, process and load-test tests race real servers or time them,
# and met CPU contention beside another worker that they never meet alone. 0 runs everything in one
# process, in one phase (use it when passing a -m of your own: the phases use -m).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHONS=(3.10 3.13)
# shellcheck source=scripts/test_phases.sh
source scripts/test_phases.sh  # run_tests: the two phases, shared with scripts/repeat_tests.sh

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

# One venv per Python in PYTHONS that this machine has: .venv where python3 is that version, else
# .venv-X.Y. Lint and type-check in the newest one's (mypy reads the installed numpy's stubs, which
# differ by version); with none of them, everything runs in .venv.
default=$(python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')
venvs=()
for version in "${PYTHONS[@]}"; do
  if [ "$version" = "$default" ]; then
    bash scripts/bootstrap.sh
    venvs+=(.venv)
  elif python=$(find_python "$version"); then
    bash scripts/bootstrap.sh "$python" ".venv-$version"
    venvs+=(".venv-$version")
  else
    echo "== SKIPPED: tests on Python $version (no working python$version on PATH or in pyenv's versions)"
  fi
done
if [ "${#venvs[@]}" = 0 ]; then
  bash scripts/bootstrap.sh
  venvs=(.venv)
fi
lint=${venvs[${#venvs[@]} - 1]}
echo "== lint and type checks in $lint"
"$lint/bin/ruff" check .
"$lint/bin/ruff" format --check .
"$lint/bin/mypy" batcher clients server loadtest

# Checks that exercise a script or the package index, not the Python (tests/support/once.py), run on
# one Python each: pip's resolution of the extras on the oldest, the dry GPU check on the newest.
# The Pythons share the integration test files (tests/support/share.py: the unit tests and the
# files that test onnxruntime's or numpy's own behaviour run on each, every other file on one);
# SLUICEWAY_TEST_FULL=1 runs every test on each Python (the long run: ~16-18 minutes here).
full=${SLUICEWAY_TEST_FULL:-0}
[ "$full" = 1 ] || echo "== the Pythons share the integration tests (SLUICEWAY_TEST_FULL=1: every test on each)"
rc=0
for i in "${!venvs[@]}"; do
  once="" share=""
  [ "$i" = 0 ] && once+="extras-resolve,"
  [ "$i" = $((${#venvs[@]} - 1)) ] && once+="gpu-dry-run,loadtest-runs,"
  [ "$full" = 1 ] || share="$i/${#venvs[@]}"
  SLUICEWAY_TEST_ONCE=$once SLUICEWAY_TEST_SHARE=$share run_tests "${venvs[$i]}" "$@" || rc=$?
done
exit "$rc"
