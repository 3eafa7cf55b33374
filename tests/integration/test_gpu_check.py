"""The GPU check's dry run (loadtest/gpu_check.py --dry): the path a GPU run takes (repository copies
with KIND_GPU groups and the TensorRT accelerator, accepted by a real server; raw onnxruntime;
sluiceway-loadtest against that server) on the CPU provider, about 20 s here. The table must hold
every row of the plan with numbers, and say on every line that it is a dry run, not GPU figures.
scripts/gpu_check.sh itself: its syntax, and its refusal to run without a GPU unless --dry."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from loadtest.gpu_check import MODELS, PROVIDERS, mentions, plan_for
from loadtest.gpu_perf_analyzer import levels
from loadtest.gpu_report import PA_SHM, PA_WIRE, RAW, SERVED
from tests.support.once import GPU_DRY_RUN, once_per_command
from tests.support.perf_analyzer_tool import usable_perf_analyzer

REPO = Path(__file__).resolve().parents[2]
NUMBER = re.compile(r"^-?[\d,]+\.\d+$")
# The dry run (~33 s of one test worker on a slow day) once per test command, on the newest of its
# Pythons: it exercises the script's path, not the Python (the GPU image runs 3.12).
ONCE = once_per_command(GPU_DRY_RUN)
PA_MODELS = plan_for(dry=True).pa_models  # perf_analyzer's, by default


@pytest.fixture(scope="module")
def tool() -> Path | str:
    """perf_analyzer where it starts (the dry run then measures its rows too), else why not."""
    return usable_perf_analyzer()


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory: pytest.TempPathFactory, tool: Path | str) -> tuple[str, dict[str, object]]:
    out = tmp_path_factory.mktemp("gpu_check") / "table.md"
    work = out.parent / "work"
    command = [sys.executable, "-m", "loadtest.gpu_check", str(out), "--dry", "--budget-s", "130"]
    command += ["--work-dir", str(work), *(["--perf-analyzer", str(tool)] if isinstance(tool, Path) else [])]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=140, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return out.read_text(), json.loads(out.with_suffix(".json").read_text())


@ONCE
def test_the_dry_table_has_every_row_with_numbers(dry_run: tuple[str, dict[str, object]]) -> None:
    text, _ = dry_run
    plan = plan_for(dry=True)
    rows = [line.split("|")[1:-1] for line in text.splitlines() if line.startswith("| ")]
    measured = {(c[0].strip(), c[1].strip(), c[2].strip(), c[3].strip()): c for c in rows if len(c) == 9}
    for provider in PROVIDERS:
        label = plan.label(provider)
        for model in MODELS:
            levels = [(RAW, f"batch {b}") for b in plan.raw_batches]
            levels += [(SERVED, f"{n} in flight") for n in plan.in_flight]
            for measure, level in levels:
                cells = measured.get((model, label, measure, level))
                assert cells is not None, f"no row for {model} {label} {measure} {level}"
                figures = [cell.strip() for cell in cells[4:8]]  # rows/s, avg batch, p50, p99
                assert all(NUMBER.match(f) for f in figures), f"{model} {label} {level}: {figures}"
    summary = [c for c in rows if len(c) == 8 and c[0].strip() in MODELS]
    assert len(summary) == len(MODELS) * len(PROVIDERS)
    assert all(NUMBER.match(c[4].strip()) and NUMBER.match(c[5].strip()) for c in summary)


@ONCE
def test_dry_figures_are_never_labelled_gpu_figures(dry_run: tuple[str, dict[str, object]]) -> None:
    text, data = dry_run
    assert text.startswith("# GPU check: CPU DRY RUN (not GPU figures)")
    assert "**CPU DRY RUN: not GPU figures.**" in text
    table_rows = [
        line for line in text.splitlines() if line.startswith("| ") and line.split("|")[1].strip() in MODELS
    ]
    assert all("CPU (dry run of the " in line for line in table_rows)
    plan = plan_for(dry=True)
    per_model = 1 + len(plan.raw_batches) + len(plan.in_flight)  # summary + raw + served
    # perf_analyzer's rows (where it starts here) are the next test's: its measurements, its table.
    transport = (
        text.split("## Transport", 1)[-1].split("## Measurements", 1)[0] if "## Transport" in text else ""
    )
    ours = [line for line in table_rows if "perf_analyzer" not in line and line not in transport]
    assert len(ours) == len(MODELS) * len(PROVIDERS) * per_model
    assert data["dry"] is True
    # The server was asked for the GPU and said, per model, what it ran on instead.
    warnings = text.split("## Server warnings", 1)[-1].splitlines()
    assert all(any(mentions(line, m) for line in warnings) for m in MODELS), warnings


@ONCE
def test_perf_analyzer_measures_the_resnets_over_the_wire_and_shared_memory(
    dry_run: tuple[str, dict[str, object]], tool: Path | str
) -> None:
    """The outside check and the transport's share (served resnet was 0.12 of raw on an H200): each
    GPU provider's server, both resnets, each level above one, with and without shared memory."""
    if isinstance(tool, str):
        pytest.skip(tool)
    text, data = dry_run
    plan = plan_for(dry=True)
    rows = {(r["model"], r["provider"], r["measure"], r["level"]): r for r in data["rows"]}  # type: ignore[attr-defined, index]
    gpu_labels = [plan.label(p) for p in PROVIDERS if p.key != "cpu"]
    for label in gpu_labels:
        for model in PA_MODELS:
            for measure in (PA_WIRE, PA_SHM):
                for level in levels(plan):
                    row = rows[(model, label, measure, level)]
                    assert row["rows_s"] and row["rows_s"] > 0 and row["avg_batch"] >= 1, row
                    assert row["p50_ms"] <= row["p99_ms"], row
    assert not [k for k in rows if k[1] == plan.label(PROVIDERS[-1]) and "perf_analyzer" in k[2]]  # not CPU
    transport = data["transport"]
    assert len(transport) == len(gpu_labels) * len(PA_MODELS) * len(levels(plan))  # type: ignore[arg-type]
    assert all(t["shm_over_wire"] and t["shm_over_raw_best"] for t in transport)  # type: ignore[union-attr]
    assert "## Transport: perf_analyzer over the wire and with shared memory" in text
    assert "CUDA shm" not in text  # a dry run tries no CUDA shared memory: no empty columns for it


def gpu_check_sh(out: Path, env: dict[str, str], timeout_s: float = 60) -> subprocess.CompletedProcess[str]:
    """scripts/gpu_check.sh run into `out` with `env`, its output captured."""
    return subprocess.run(
        ["bash", "scripts/gpu_check.sh", str(out)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout_s, check=False,
    )  # fmt: skip


def test_the_script_refuses_a_machine_without_a_gpu(tmp_path: Path) -> None:
    assert subprocess.run(["bash", "-n", "scripts/gpu_check.sh"], cwd=REPO, check=False).returncode == 0
    if shutil.which("nvidia-smi"):
        pytest.skip("this machine has nvidia-smi: the no-GPU refusal cannot be seen here")
    done = gpu_check_sh(tmp_path, dict(os.environ))
    assert done.returncode == 1 and "no NVIDIA GPU here" in done.stderr and "--dry" in done.stderr
    assert not (tmp_path / "gpu_check.md").exists()


def test_the_script_refuses_providers_it_does_not_know(tmp_path: Path) -> None:
    """A tester's `cpu,bogus` ran, and `'cuda, cpu'` measured CUDA alone, both without a word."""
    env = {**os.environ, "GPU_CHECK_PROVIDERS": "cuda,bogus"}
    done = gpu_check_sh(tmp_path, env)
    assert done.returncode == 2 and "GPU_CHECK_PROVIDERS names 'bogus'" in done.stderr


def stand_ins(tmp_path: Path, pip: str) -> dict[str, str]:
    """A GPU machine's look, short of a GPU: a stand-in nvidia-smi on PATH, a venv whose python runs
    `pip` (a shell line, $* its arguments) for `-m pip` and this Python for the rest, and a
    perf_analyzer that prints its usage. The environment for scripts/gpu_check.sh."""
    bin_dir, venv_bin = tmp_path / "bin", tmp_path / "venv" / "bin"
    bin_dir.mkdir()
    venv_bin.mkdir(parents=True)
    scripts = {
        bin_dir / "nvidia-smi": 'echo "GPU 0: Stand-in H200 (UUID: GPU-0)"',
        # `-m pip --version` answers: were it to fail, the script would fall back to this Python's
        # own pip with --python pointing here, and install into this checkout's .venv (a tester's).
        venv_bin / "python": (
            f'[ "$1 $2 $3" = "-m pip --version" ] && exit 0\n'
            f'[ "$1 $2" = "-m pip" ] && {{ {pip}; exit 0; }}\nexec {sys.executable} "$@"'
        ),
        tmp_path / "perf_analyzer": 'echo "Usage: perf_analyzer -m <model name>"; exit 1',
    }
    for path, body in scripts.items():
        path.write_text(f"#!/usr/bin/env bash\n{body}\n")
        path.chmod(0o755)
    return {
        **os.environ,
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "GPU_CHECK_VENV": str(tmp_path / "venv"),
        "GPU_CHECK_PROVIDERS": "cuda,cpu",
        "GPU_CHECK_PERF_ANALYZER": str(tmp_path / "perf_analyzer"),
    }


def test_the_script_on_a_gpu_machine_hands_the_measurement_its_providers(tmp_path: Path) -> None:
    """The GPU path of the script over stand-ins (this Python's onnxruntime, a pip that records its
    calls). A review had reused `providers` for onnxruntime's version line, and the measurement was
    handed `--providers "1.31.1 ['CUDAExecutionProvider', ...]"`: a GPU session's check would have
    ended in a usage error. Here it gets as far as onnxruntime's providers (this CPU build lists no
    CUDA) with the providers and the perf_analyzer it was given."""
    if shutil.which("nvidia-smi"):
        pytest.skip("this machine has nvidia-smi: the stand-in would not be the one found")
    calls = tmp_path / "pip-calls"
    limit = str(100_000 + os.getpid() % 900_000)  # its own timer (pgrep sees other test runs' too)
    env = {**stand_ins(tmp_path, f'echo "$*" >>{calls}'), "GPU_CHECK_LIMIT_S": limit}
    env["GPU_CHECK_SERVER_ARGS"] = "--shared-sessions=gpu --max-batches-in-flight=2"  # parsed, not refused
    out = tmp_path / "out"
    done = gpu_check_sh(out, env, timeout_s=300)
    left = subprocess.run(["pgrep", "-xf", f"sleep {limit}"], capture_output=True, text=True, check=False)
    assert left.stdout == "", f"the limit's timer outlived the run: {left.stdout}"
    log = (out / "gpu_check.log").read_text()
    assert done.returncode == 1, log[-2000:]
    assert "onnxruntime lists no CUDAExecutionProvider" in log, log[-2000:]
    assert "usage:" not in log and "error:" not in log, log[-2000:]
    assert "perf_analyzer at" not in log and "install perf_analyzer" not in log  # the one named: started
    assert "-m pip install -q --disable-pip-version-check -e .[cuda,gpucheck]" in calls.read_text()


def test_a_rerun_can_leave_the_gpu_tests_out(tmp_path: Path) -> None:
    """GPU_CHECK_TESTS=0 (scripts/gpu_session.sh's second and third steps, on a machine whose first
    step ran them): the tests are not run, and the log says so."""
    if shutil.which("nvidia-smi"):
        pytest.skip("this machine has nvidia-smi: the stand-in would not be the one found")
    env = {**stand_ins(tmp_path, "true"), "GPU_CHECK_TESTS": "0"}
    out = tmp_path / "out"
    gpu_check_sh(out, env, timeout_s=300)
    log = (out / "gpu_check.log").read_text()
    assert "not run (GPU_CHECK_TESTS=0)" in log, log[-2000:]
    assert "passed" not in (out / "gpu_tests.log").read_text()


def test_mps_is_started_for_the_measurement_and_stopped_after(tmp_path: Path) -> None:
    """GPU_CHECK_MPS=1: NVIDIA's MPS daemon (a stand-in here) is started before the measurement,
    with its pipes in a folder of the run's own that the measurement's processes inherit, said in
    the log and the report's context, and told to quit when the script ends (it forks into a session
    of its own, which the limit's signal would not reach)."""
    if shutil.which("nvidia-smi"):
        pytest.skip("this machine has nvidia-smi: the stand-in would not be the one found")
    calls = tmp_path / "mps-calls"
    env = {**stand_ins(tmp_path, "true"), "GPU_CHECK_LIMIT_S": "300", "GPU_CHECK_MPS": "1"}
    mps = tmp_path / "bin" / "nvidia-cuda-mps-control"
    record = f'echo "args=$* pipes=$CUDA_MPS_PIPE_DIRECTORY stdin=$(cat)" >>{calls}'
    mps.write_text(f"#!/usr/bin/env bash\n{record}\n")
    mps.chmod(0o755)
    out = tmp_path / "out"
    done = gpu_check_sh(out, env, timeout_s=300)
    log = (out / "gpu_check.log").read_text()
    assert done.returncode == 1, log[-2000:]  # this CPU build lists no CUDA provider: nothing measured
    said = calls.read_text().splitlines()
    assert [line.split()[0] for line in said] == ["args=-d", "args=", "args="], said  # start, list, quit
    pipes = said[0].split()[1].removeprefix("pipes=")
    assert pipes.startswith(str(Path(env.get("TMPDIR", "/tmp")) / "gpu_check_mps."))
    assert said[1].endswith("stdin=get_server_list") and said[2].endswith("stdin=quit"), said
    assert f"== MPS: on (nvidia-cuda-mps-control -d, pipes in {pipes})" in log
    assert not Path(pipes).exists()  # its folder (the daemon's own log) removed, the log's end kept


def test_the_limit_bounds_the_whole_run(tmp_path: Path) -> None:
    """GPU_CHECK_LIMIT_S bounds the script, not only the steps that fit: the install keeps a floor
    of 60 s whatever is left, and a dry run's bootstrap had none. A pip install that hangs, under
    the script's own `timeout` (a process group of its own, which the limit's signal had not
    reached: a tester found it running a minute after the script had exited), is stopped at the
    limit with everything else, and the script says so (exit 124)."""
    if shutil.which("nvidia-smi"):
        pytest.skip("this machine has nvidia-smi: the stand-in would not be the one found")
    hang = f"sleep 127.{os.getpid()}"  # this run's own (pgrep sees other test runs' too)
    env = {
        **stand_ins(tmp_path, f'case " $* " in *" install "*) {hang} ;; esac'),
        "GPU_CHECK_LIMIT_S": "4",
    }
    done = gpu_check_sh(tmp_path / "out", env)
    assert done.returncode == 124, done.stderr[-2000:]
    assert "stopped at GPU_CHECK_LIMIT_S=4 s" in done.stderr
    assert "== install .[cuda,gpucheck]" in (tmp_path / "out" / "gpu_check.log").read_text()  # where it hung
    left = subprocess.run(["pgrep", "-xf", re.escape(hang)], capture_output=True, text=True, check=False)
    assert left.stdout == "", f"left running: {left.stdout}"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("GPU_CHECK_LIMIT_S", "5m"),
        ("GPU_CHECK_LIMIT_S", "08"),  # bash's arithmetic reads it as octal
        ("GPU_CHECK_LIMIT_S", "99999999999999999999"),
        ("GPU_CHECK_SERVER_WORKERS", "abc"),
        ("GPU_CHECK_INSTANCES", "0"),
        ("GPU_CHECK_CLIENT_PROCESSES", "-1"),
        ("GPU_CHECK_PROVIDERS", "cuda,,cpu"),
        ("GPU_CHECK_PROVIDERS", "cuda cpu"),
        ("GPU_CHECK_PROVIDERS", "cuda,"),
    ],
)
def test_bad_settings_are_refused_before_anything_is_installed(tmp_path: Path, name: str, value: str) -> None:
    """A tester's `GPU_CHECK_SERVER_WORKERS=abc` (and `cuda,,cpu`) was refused by the measurement,
    after the install and the GPU tests had spent a GPU session's minutes."""
    calls = tmp_path / "pip-calls"
    env = {**stand_ins(tmp_path, f'echo "$*" >>{calls}'), name: value}
    done = gpu_check_sh(tmp_path / "out", env)
    assert done.returncode == 2, done.stderr[-2000:]
    assert f"{name}='{value}'" in done.stderr or f"names '{value}'" in done.stderr, done.stderr
    assert not calls.exists()  # nothing installed, nothing run
