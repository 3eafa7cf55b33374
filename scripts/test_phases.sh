# Sourced by scripts/test.sh and scripts/repeat_tests.sh: the test command's two phases.
# shellcheck shell=bash

# Bytecode is cached (in the git-ignored __pycache__ folders) even where the environment turns it
# off: the tests start many Python processes (servers, load generators, peers), each of which would
# compile the project again, and pytest would rewrite every test module again in each of its
# processes. Writing it took the parallel phase from 175-181 s to 167-171 s here (BENCHMARKS.md,
# "The test command's time").
unset PYTHONDONTWRITEBYTECODE

# run_tests VENV [PYTEST ARGS...]: the files not marked `serial` over SLUICEWAY_TEST_WORKERS (default
# 2) pytest-xdist workers, each file on one worker, then the `serial` ones alone; 0 workers runs
# everything in one process and one phase. A fresh random order unless the arguments name one.
# Returns non-zero when either phase failed (after running both).
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
  # Only the files that mark tests `serial`: collecting all of tests/ to pick them took ~7 s.
  local serial_rc=0 serial_files
  mapfile -t serial_files < <(grep -rl --include='test_*.py' 'pytest.mark.serial' tests | sort)
  "$venv/bin/python" -m pytest -q "${serial_files[@]}" -m serial "${order[@]}" "$@" || serial_rc=$?
  [ "$serial_rc" = 5 ] && serial_rc=0
  [ "$rc" = 0 ] && [ "$serial_rc" = 0 ]
}
