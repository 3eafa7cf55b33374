#!/usr/bin/env bash
# The GPU check of issue 15, on a Linux machine with an NVIDIA GPU, from nothing but Python 3 and
# the driver: a venv with the GPU runtime, the tests marked `gpu`, then raw onnxruntime against the
# served rate for resnet, resnet_u8 and mlp on CUDA and TensorRT FP16 (loadtest/gpu_check.py), as
# a Markdown table (and JSON) in PATH or $OUT. Bounded: the whole script ends within
# GPU_CHECK_LIMIT_S (default 450 s, under the issue's 8 minutes); every step has its own timeout.
#
#   bash scripts/gpu_check.sh [PATH]        # a folder or a .md file (default $OUT, else out/gpu_check)
#   bash scripts/gpu_check.sh --dry [PATH]  # the same path on CPU in .venv, tiny durations, labelled a dry run
#
# Environment: GPU_CHECK_DRY=1 (as --dry); GPU_CHECK_PYTHON (python3); GPU_CHECK_VENV (.venv-gpu);
# GPU_CHECK_EXTRAS (cuda,gpucheck: the GPU wheel with NVIDIA's CUDA/cuDNN wheels; gpu,gpucheck where
# the libraries are already there); GPU_CHECK_SYSTEM_SITE=1 (the venv sees the packages of
# GPU_CHECK_PYTHON's environment, e.g. an image's CUDA wheels; default extras then gpu,gpucheck);
# GPU_CHECK_WHEELHOUSE=DIR (install offline from the wheels in DIR, or from the folders
# scripts/wheelhouse.py laid out there, for a machine without the index); GPU_CHECK_INSTALL_ONLY=1
# (stop once the venv is installed, for scripts/gpu_diag.py); GPU_CHECK_PROVIDERS (cuda,tensorrt,cpu:
# what is measured; cpu serves the same models on the CPU, for the GPU's gain); GPU_CHECK_INSTANCES
# (1: instances of the group on GPU 0); GPU_CHECK_CLIENT_PROCESSES (4: the load generator's);
# GPU_CHECK_SERVER_WORKERS (1: `serve --workers`, server processes each with its own instances);
# GPU_CHECK_PERF_ANALYZER (a perf_analyzer to run, 0 for none; default the venv's, installed from
# the wheelhouse or the index: the resnets through it, over the wire and with system shared memory,
# and CUDA shared memory for resnet with one server process); GPU_CHECK_PA_MODELS (perf_analyzer's
# models, comma-separated: resnet, resnet_u8; default both); GPU_CHECK_MPS=1 (start NVIDIA's MPS daemon for the
# measurement and stop it after: several server workers' CUDA contexts then share the GPU at once);
# GPU_CHECK_TESTS=0 (the GPU tests not run: a rerun on a machine that ran them);
# GPU_CHECK_SERVER_ARGS (more `serve` flags, space-separated, each --name=value, e.g.
# "--shared-sessions=gpu --max-batches-in-flight=2": the workers' sessions in one session host).
set -euo pipefail
PERF_ANALYZER_VERSION=2.60.0
limit_s=${GPU_CHECK_LIMIT_S:-450}
positive() { # NAME VALUE: a whole number from 1, no leading zero, at most 6 digits (bash reads 08 as octal)
  case $2 in
    '' | *[!0-9]* | 0* | ???????*)
      echo "gpu_check.sh: $1='$2' is not a whole number from 1 (at most 6 digits)" >&2
      exit 2
      ;;
  esac
}
positive GPU_CHECK_LIMIT_S "$limit_s"
positive GPU_CHECK_INSTANCES "${GPU_CHECK_INSTANCES:-1}"
positive GPU_CHECK_CLIENT_PROCESSES "${GPU_CHECK_CLIENT_PROCESSES:-4}"
positive GPU_CHECK_SERVER_WORKERS "${GPU_CHECK_SERVER_WORKERS:-1}"
providers=${GPU_CHECK_PROVIDERS:-cuda,tensorrt,cpu}
case $providers in
  *[!a-z,]* | ,* | *, | *,,*)
    echo "gpu_check.sh: GPU_CHECK_PROVIDERS='$providers': it takes cuda, tensorrt and cpu, comma-separated" >&2
    exit 2
    ;;
esac
for name in ${providers//,/ }; do
  case $name in
    cuda | tensorrt | cpu) ;;
    *) echo "gpu_check.sh: GPU_CHECK_PROVIDERS names '$name': it takes cuda, tensorrt and cpu, comma-separated" >&2; exit 2 ;;
  esac
done
pa_models=${GPU_CHECK_PA_MODELS:-} # checked here, not after the install and the GPU tests
case $pa_models in
  *[!a-z0-9_,]* | ,* | *, | *,,*)
    echo "gpu_check.sh: GPU_CHECK_PA_MODELS='$pa_models': it takes resnet and resnet_u8, comma-separated" >&2
    exit 2
    ;;
esac
for name in ${pa_models//,/ }; do
  case $name in
    resnet | resnet_u8) ;;
    *) echo "gpu_check.sh: GPU_CHECK_PA_MODELS names '$name': it takes resnet and resnet_u8, comma-separated" >&2; exit 2 ;;
  esac
done
dry=${GPU_CHECK_DRY:-0}
path=""
for arg in "$@"; do
  case $arg in
    --dry) dry=1 ;;
    -h | --help) sed -n '2,24p' "$0"; exit 0 ;;
    -*) echo "gpu_check.sh: unknown option $arg" >&2; exit 2 ;;
    *) path=$arg ;;
  esac
done
out=$(realpath -m -- "${path:-${OUT:-out/gpu_check}}") # as given from here, before the cd below
tree() { # PID: it and its descendants, parents first
  local child
  echo "$1"
  for child in $(ps -o pid= --ppid "$1" 2>/dev/null); do tree "$child"; done
}
if [ -z "${GPU_CHECK_BOUNDED:-}" ]; then
  # The whole run under one bound: each step's timeout is cut to the time left, but some keep a
  # floor (an install needs its minute, a dry run's bootstrap makes .venv) and could run past it.
  # At the limit every process of the run is signalled, found by parent: a step under its own
  # `timeout` is a process group of its own, which a group signal would not reach. (Not a session
  # of its own: perf_analyzer, started in a new session, ran on without end here.)
  set +e
  fired=$(mktemp "${TMPDIR:-/tmp}/gpu_check_limit.XXXXXX")
  rm -f "$fired"
  GPU_CHECK_BOUNDED=1 bash "$0" "$@" &
  inner=$!
  (
    sleep "$limit_s"
    : >"$fired"
    pids=$(tree "$inner")
    kill -TERM $pids 2>/dev/null # the measurement writes what it has measured, the server stops
    for _ in $(seq 20); do # up to 10 s for all of them (`kill -0 A B` fails once any one is gone)
      alive=0
      for pid in $pids; do kill -0 "$pid" 2>/dev/null && alive=1; done
      [ "$alive" = 0 ] && break
      sleep 0.5
    done
    # Its steps, not the script: that waits for them, then runs its EXIT trap (the MPS daemon's quit).
    kill -KILL $(tree "$inner" | tail -n +2) 2>/dev/null
    for _ in $(seq 50); do kill -0 "$inner" 2>/dev/null || break; sleep 0.5; done
    kill -KILL $(tree "$inner") 2>/dev/null
  ) &
  watchdog=$!
  wait "$inner"
  rc=$?
  kill $(tree "$watchdog") 2>/dev/null
  wait "$watchdog" 2>/dev/null
  if [ -e "$fired" ]; then
    rm -f "$fired"
    echo "gpu_check.sh: stopped at GPU_CHECK_LIMIT_S=${limit_s} s" >&2
    exit 124
  fi
  exit "$rc"
fi
cd "$(dirname "$0")/.."
# What the run started and must stop or remove whatever way it ends (the limit's SIGTERM too).
cleanup=()
on_exit() {
  local step_
  for step_ in "${cleanup[@]}"; do eval "$step_" || true; done
}
trap on_exit EXIT
trap 'exit 143' TERM
case $out in
  *.md) logs=$(dirname "$out") ;;
  *) logs=$out ;;
esac
mkdir -p "$logs"
# A table left by an earlier run would sit beside this run's log as if it were this run's.
rm -f "$logs/gpu_check.md" "$logs/gpu_check.json" "$logs/gpu_tests.log"
[ "${out##*.}" = md ] && rm -f "$out" "${out%.md}.json"
log="$logs/gpu_check.log"
: >"$log"
step() { echo "== $* ($((SECONDS)) s)" | tee -a "$log"; }
# Seconds an install step may take: what is left once the measurement (240 s) and the tests (60 s)
# are set aside, at most $1 and at least ${2:-1}. A rerun finds the venv installed: seconds here.
install_s() {
  local spare=$((limit_s - SECONDS - 240 - 60)) floor=${2:-1}
  spare=$((spare < $1 ? spare : $1))
  echo $((spare < floor ? floor : spare))
}

if [ "$dry" = 1 ]; then
  step "dry run: CPU provider in .venv, no install, tiny durations"
  [ -x .venv/bin/python ] || bash scripts/bootstrap.sh >>"$log" 2>&1
  py=.venv/bin/python
else
  if ! gpus=$(timeout 30 nvidia-smi -L 2>>"$log") || ! grep -q '^GPU ' <<<"$gpus"; then
    echo "gpu_check.sh: no NVIDIA GPU here (nvidia-smi -L failed or lists none); --dry runs on CPU" >&2
    exit 1
  fi
  step "GPU: $(head -1 <<<"$gpus")"
  venv=${GPU_CHECK_VENV:-.venv-gpu}
  base=${GPU_CHECK_PYTHON:-python3}
  extras=${GPU_CHECK_EXTRAS:-cuda,gpucheck}
  site=()
  if [ "${GPU_CHECK_SYSTEM_SITE:-0}" = 1 ]; then
    site=(--system-site-packages)
    extras=${GPU_CHECK_EXTRAS:-gpu,gpucheck}
  fi
  if [ -x "$venv/bin/python" ]; then
    # Made by an earlier run: GPU_CHECK_PYTHON and GPU_CHECK_SYSTEM_SITE took effect then, not now.
    step "the venv $venv is reused as an earlier run made it (remove it to make it again)"
  else
    # Where ensurepip is missing (Debian's python3 without python3-venv) the venv is made without
    # pip, and $base's own pip installs into it (below).
    "$base" -m venv "${site[@]}" "$venv" 2>>"$log" || "$base" -m venv --without-pip "${site[@]}" "$venv"
    # A venv made by a venv's python (an image's python3 often is one: /opt/torch/.venv) sees the
    # base interpreter's packages, not that venv's; a .pth file adds that venv's site-packages,
    # after the new venv's own, so what is installed here comes first.
    if [ "${#site[@]}" -gt 0 ]; then
      outer=$("$base" -c 'import site, sys; print(site.getsitepackages() if sys.prefix != sys.base_prefix else "")')
      if [ -n "$outer" ]; then
        inner=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
        echo "import site; [site.addsitedir(d) for d in $outer]" >"$inner/_outer_site.pth"
        step "the venv also sees $outer"
      fi
    fi
  fi
  py=$venv/bin/python
  pip=("$py" -m pip)
  "$py" -m pip --version >/dev/null 2>&1 || pip=("$base" -m pip --python "$py")
  pip+=(install -q --disable-pip-version-check)
  pip_from=()
  if [ -n "${GPU_CHECK_WHEELHOUSE:-}" ]; then
    [ -d "$GPU_CHECK_WHEELHOUSE" ] || {
      echo "gpu_check.sh: GPU_CHECK_WHEELHOUSE=$GPU_CHECK_WHEELHOUSE is not a folder" >&2
      exit 2
    }
    house=$GPU_CHECK_WHEELHOUSE
    if compgen -G "$house/*/manifest.json" >/dev/null; then
      step "join the wheelhouse's folders in $house"
      house=$(mktemp -d "${TMPDIR:-/tmp}/sluiceway-wheelhouse.XXXXXX")  # only the wheels join checked
      cleanup+=("rm -rf -- $(printf %q "$house")")
      "$py" scripts/wheelhouse.py join "$GPU_CHECK_WHEELHOUSE" "$house" 2>&1 | tee -a "$log"
    fi
    # Offline: the build backend from the wheelhouse (or the system's) too, not from an index.
    pip_from=(--no-index --find-links "$house" --no-build-isolation)
    timeout 120 "${pip[@]}" --no-index --find-links "$house" "setuptools>=68" >>"$log" 2>&1 ||
      { step "setuptools did not install from $house (see $log)"; exit 1; }
  fi
  step "install .[$extras] into $venv"
  timeout "$(install_s 240 60)" "${pip[@]}" "${pip_from[@]}" -e ".[$extras]" >>"$log" 2>&1 ||
    { step "the install failed or ran out of time (see $log)"; exit 1; }
  # TensorRT's libraries come from pypi.nvidia.com (a stub on PyPI fetches them); without them the
  # TensorRT rows say that the provider did not start, and the rest still runs.
  if [ "$(install_s 180 0)" -ge 30 ]; then
    step "install .[tensorrt]"
    timeout "$(install_s 180)" "${pip[@]}" "${pip_from[@]}" -e ".[tensorrt]" >>"$log" 2>&1 ||
      step "TensorRT libraries not installed (see $log)"
  else
    step "no time left to install TensorRT's libraries"
  fi
  # perf_analyzer (NVIDIA's, PyPI perf-analyzer; its real wheels need glibc 2.38): the outside check
  # and the shared-memory rows. Not a dependency: from the wheelhouse if it holds one, else the index.
  if [ -z "${GPU_CHECK_PERF_ANALYZER:-}" ] && [ ! -x "$venv/bin/perf_analyzer" ]; then
    pa_wheel=()
    if [ -n "${GPU_CHECK_WHEELHOUSE:-}" ]; then
      mapfile -t pa_wheel < <(compgen -G "$house/perf_analyzer-*.whl" || true)
    else
      pa_wheel=("perf-analyzer==$PERF_ANALYZER_VERSION")
    fi
    if [ "${#pa_wheel[@]}" -gt 0 ]; then
      step "install perf_analyzer (${pa_wheel[0]##*/})"
      timeout 120 "${pip[@]}" "${pip_from[@]}" --no-deps --only-binary=:all: "${pa_wheel[0]}" >>"$log" 2>&1 ||
        step "perf_analyzer not installed (see $log)"
    else
      step "no perf_analyzer wheel in $house: its rows are left out"
    fi
  fi
  # The providers dlopen CUDA, cuDNN and TensorRT by name: put the NVIDIA wheels' folders on the
  # loader's path for the raw runs as well as the server (which also preloads them itself).
  libs=$("$py" - <<'EOF'
import glob, os, sys
found = []
for entry in sys.path:
    if entry.endswith(("site-packages", "dist-packages")):
        for pattern in ("nvidia/*/lib", "tensorrt_libs"):
            found += [d for d in sorted(glob.glob(os.path.join(entry, pattern))) if d not in found]
print(":".join(found))
EOF
  )
  export LD_LIBRARY_PATH="$libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  # Not $providers: that is what is measured (a review's rename had passed this line as --providers).
  runtime=$("$py" -c 'import onnxruntime as o; print(o.__version__, o.get_available_providers())' 2>>"$log" || true)
  step "onnxruntime: $runtime"
  if [ "${GPU_CHECK_INSTALL_ONLY:-0}" = 1 ]; then
    step "installed only (GPU_CHECK_INSTALL_ONLY=1): $py"
    exit 0
  fi
fi

# Only the files that hold gpu tests: collecting the rest would import the test extra's tools.
mapfile -t gpu_files < <(grep -rlE 'pytest\.mark\.gpu' tests --include='test_*.py' | sort)
step "tests marked gpu (${gpu_files[*]})"
tests="$logs/gpu_tests.log"
set +e
tests_s=$((limit_s - SECONDS - 240))
tests_s=$((tests_s < 120 ? (tests_s < 30 ? 30 : tests_s) : 120))
if [ "${GPU_CHECK_TESTS:-1}" = 0 ]; then # a rerun on the same machine (scripts/gpu_session.sh)
  echo "not run (GPU_CHECK_TESTS=0)" >"$tests"
  rc=0
else
  # -P: what passed tests printed too (the GPU gauges' readings on this GPU).
  timeout "$tests_s" "$py" -m pytest -q -rsP -m gpu "${gpu_files[@]}" -p no:randomly >"$tests" 2>&1
  rc=$?
fi
set -e
case $rc in
  0 | 1) ;;
  5) echo "no tests marked gpu were collected" >>"$tests" ;;
  124) echo "the gpu tests ran past their time and were stopped" >>"$tests" ;;
  *) echo "pytest exited $rc (collection or usage error, see $tests)" >>"$tests" ;;
esac
tail -1 "$tests" | tee -a "$log"

flags=(--tests-summary "$tests" --providers "$providers")
flags+=(--instances "${GPU_CHECK_INSTANCES:-1}" --client-processes "${GPU_CHECK_CLIENT_PROCESSES:-4}")
flags+=(--server-workers "${GPU_CHECK_SERVER_WORKERS:-1}")
for flag in ${GPU_CHECK_SERVER_ARGS:-}; do # e.g. "--shared-sessions=gpu --max-batches-in-flight=2"
  flags+=("--server-arg=$flag")
done
for model in ${pa_models//,/ }; do # e.g. "resnet"
  flags+=("--pa-model=$model")
done
# perf_analyzer: GPU_CHECK_PERF_ANALYZER names one (0: none), else the venv's: the wheel's binary
# itself, not its console script (which exits 0 whatever the tool did, and leaves it running when
# it is stopped).
tool=${GPU_CHECK_PERF_ANALYZER:-}
if [ -z "$tool" ] && [ "$dry" != 1 ]; then
  tool=$("$py" -c 'import os, perf_analyzer as p; print(os.path.join(os.path.dirname(p.__file__), "bin", "perf_analyzer"))' 2>/dev/null || echo "${venv:-.venv-gpu}/bin/perf_analyzer")
fi
why_not=""
if [ "$tool" = 0 ]; then
  why_not="GPU_CHECK_PERF_ANALYZER=0"
elif [ -n "$tool" ]; then
  said=$([ -x "$tool" ] && timeout 20 "$tool" 2>&1 || true) # run bare, it prints its usage
  if grep -qE 'Usage|model name' <<<"$said"; then
    flags+=(--perf-analyzer "$tool")
  else
    why_not="$tool does not start"
  fi
fi
if [ -n "$why_not" ]; then
  step "perf_analyzer left out: $why_not"
  flags+=(--without-perf-analyzer "$why_not")
fi
# NVIDIA's MPS: without it the workers' CUDA contexts take turns on the GPU (8 workers served resnet
# at 0.41-0.46 of raw's best, each batching a few rows). The daemon forks into a session of its own,
# so it is stopped here (quit, from the EXIT trap), not by the limit's signal.
stop_mps() { # DIR: quit the daemon whose pipes are in DIR, keep its log's end in the run's log, remove DIR
  echo quit | CUDA_MPS_PIPE_DIRECTORY=$1 timeout 20 nvidia-cuda-mps-control >>"$log" 2>&1
  tail -n 40 "$1"/log/*.log >>"$log" 2>/dev/null
  rm -rf -- "$1"
}
mps_started=0
if [ "${GPU_CHECK_MPS:-0}" = 1 ]; then
  if [ "$dry" = 1 ]; then
    mps="not started on a dry run"
  elif [ -n "${CUDA_MPS_PIPE_DIRECTORY:-}" ]; then
    mps="not started: CUDA_MPS_PIPE_DIRECTORY is set ($CUDA_MPS_PIPE_DIRECTORY): the machine's own daemon, if one runs there"
  elif ! command -v nvidia-cuda-mps-control >/dev/null 2>&1; then
    mps="asked for, but nvidia-cuda-mps-control is not on PATH: not used"
  else
    mps_dir=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check_mps.XXXXXX")
    mkdir -p "$mps_dir/log"
    export CUDA_MPS_PIPE_DIRECTORY=$mps_dir CUDA_MPS_LOG_DIRECTORY=$mps_dir/log
    # Before -d: one that hangs past its timeout may have started the daemon all the same.
    cleanup+=("stop_mps $(printf %q "$mps_dir")")
    if timeout 20 nvidia-cuda-mps-control -d </dev/null >>"$log" 2>&1; then
      mps_started=1
      mps="on (nvidia-cuda-mps-control -d, pipes in $mps_dir)"
    else
      mps="asked for, but nvidia-cuda-mps-control -d failed (see the log): not used"
      unset CUDA_MPS_PIPE_DIRECTORY CUDA_MPS_LOG_DIRECTORY # this run's own, set just above
    fi
  fi
  step "MPS: $mps"
  flags+=(--note "MPS: $mps")
fi
# The listing and the quit after the measurement: 30 s of the limit kept for them.
budget=$((limit_s - SECONDS - 20 - 30 * mps_started))
if [ "$budget" -lt 30 ]; then
  step "no time left to measure (limit ${limit_s} s)"
  exit 1
fi
step "measure (budget ${budget} s)"
[ "$dry" = 1 ] && flags+=(--dry)
set +e
timeout $((budget + 15)) "$py" -m loadtest.gpu_check "$out" --budget-s "$budget" "${flags[@]}" 2>&1 | tee -a "$log"
measured=$?
set -e
if [ "$mps_started" = 1 ]; then # did the servers' processes reach the daemon?
  step "MPS servers the daemon started: $(echo get_server_list | timeout 10 nvidia-cuda-mps-control 2>&1 | tr '\n' ' ')"
fi
[ "$measured" = 0 ] || exit "$measured"
if [ "$dry" != 1 ] && [ "$rc" != 0 ]; then
  step "done; the GPU tests did not all pass (pytest exit $rc: $tests)"
  exit 1
fi
step "done"
