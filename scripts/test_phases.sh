# Sourced by scripts/test.sh and scripts/repeat_tests.sh: the test command's two phases.
# shellcheck shell=bash

# Bytecode is cached (in the git-ignored __pycache__ folders) even where the environment turns it
# off: the tests start many Python processes (servers, load generators, peers), each of which would
# compile the project again, and pytest would rewrite every test module again in each of its
# processes. Writing it took the parallel phase from 175-181 s to 167-171 s here (BENCHMARKS.md,
# "The test command's time").
unset PYTHONDONTWRITEBYTECODE

# run_tests VENV [PYTEST ARGS...]: the files not marked `serial` over SLUICEWAY_TEST_WORKERS (default
# 3) pytest-xdist workers, each file on one worker, then the `serial` ones alone; 0 workers runs
# everything in one process and one phase. A fresh random order unless the arguments name one.
# Returns non-zero when either phase failed (after running both).
run_tests() {
  local venv=$1 order=()
  shift
  case " $* " in
    *randomly*) ;;  # the caller chose the order
    *) order=("--randomly-seed=$((RANDOM * 32768 + RANDOM))") ;;
  esac
  # Three workers on 2 cores: they spend part of their time waiting on the servers and load
  # generators they start; a third took this phase from 226 s to 182-193 s here (BENCHMARKS.md,
  # "The test command's time"). What times things or races servers runs in the serial phase.
  local workers=${SLUICEWAY_TEST_WORKERS:-3} rc=0
  echo "== tests on $("$venv/bin/python" --version) in $venv ${order[*]:-} (workers: $workers${SLUICEWAY_TEST_ONCE:+; once per command: ${SLUICEWAY_TEST_ONCE%,}})"
  if [ "$workers" = 0 ]; then
    "$venv/bin/python" -m pytest -q tests "${order[@]}" "$@"
    return
  fi
  # --no-loadscope-reorder: files go out in the collection's order, which puts the long ones first
  # (tests/conftest.py, LONG_FILES); xdist's own order (most tests first) left them for last.
  # Exit code 5 is "no test selected" (a -k of the caller's may leave a phase empty).
  "$venv/bin/python" -m pytest -q tests -n "$workers" --dist loadfile --no-loadscope-reorder -m "not serial" "${order[@]}" "$@" || rc=$?
  [ "$rc" = 5 ] && rc=0
  echo "== the tests marked serial, alone"
  # Only the files that mark tests `serial`: collecting all of tests/ to pick them took ~7 s.
  local serial_rc=0 serial_files
  mapfile -t serial_files < <(grep -rl --include='test_*.py' 'pytest.mark.serial' tests | sort)
  "$venv/bin/python" -m pytest -q "${serial_files[@]}" -m serial "${order[@]}" "$@" || serial_rc=$?
  [ "$serial_rc" = 5 ] && serial_rc=0
  [ "$rc" = 0 ] && [ "$serial_rc" = 0 ]
}
