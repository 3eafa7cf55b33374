"""The start-up check of the onnxruntime install (server/runtime_check.py), the preload of NVIDIA's
library wheels (server/gpu_libraries.py) and the `gpu` marker's skip rule (tests/support/gpu.py):
every case from injected distributions, paths and probes, no wheel installed or removed."""

from __future__ import annotations

import base64
import hashlib
import subprocess
import sys
from pathlib import Path

import pytest

from server.gpu_libraries import TENSORRT_LIBRARIES, preload_for
from server.runtime_check import (
    BUILD_INFO,
    FIX,
    Installed,
    check,
    check_installed,
    imported_location,
    installed_runtimes,
    normalise,
)
from tests.support.gpu import CUDA_PROVIDER, gpu_skip_reason

SITE = "/venv/lib/python3.12/site-packages"
SYSTEM = "/usr/lib/python3/dist-packages"
CPU = Installed("onnxruntime", "1.31.1", SITE)
GPU = Installed("onnxruntime-gpu", "1.31.1", SITE)


def test_one_runtime_passes_without_a_word() -> None:
    for runtime in (CPU, GPU):
        verdict = check([runtime], SITE)
        assert verdict == type(verdict)(runtime)


def test_both_wheels_in_one_folder_stop_the_server_and_name_the_fix() -> None:
    verdict = check([CPU, GPU], SITE)
    assert verdict.runtime is None and verdict.error is not None
    assert "onnxruntime 1.31.1" in verdict.error and "onnxruntime-gpu 1.31.1" in verdict.error
    assert "overwrite" in verdict.error and FIX in verdict.error
    assert "pip uninstall -y onnxruntime onnxruntime-gpu" in FIX
    assert "sluiceway[cpu]" in FIX and "sluiceway[gpu]" in FIX


def test_wheels_in_different_folders_warn_and_name_the_one_imported() -> None:
    system_cpu = Installed("onnxruntime", "1.30.0", SYSTEM)
    verdict = check([system_cpu, GPU], SITE)
    assert verdict.error is None and verdict.runtime == GPU
    assert verdict.warning is not None
    assert f"using onnxruntime-gpu 1.31.1 ({SITE})" in verdict.warning and "1.30.0" in verdict.warning
    # The other order on sys.path: the CPU wheel is the one imported, and the warning says so.
    flipped = check([system_cpu, GPU], SYSTEM)
    assert flipped.runtime == system_cpu and flipped.warning is not None
    assert f"using onnxruntime 1.30.0 ({SYSTEM})" in flipped.warning


def test_no_runtime_stops_the_server_with_the_install_command() -> None:
    verdict = check([], None)
    assert verdict.runtime is None and verdict.error is not None
    assert "no onnxruntime is installed" in verdict.error and "sluiceway[cpu]" in verdict.error
    # A module without wheel metadata (built from source) is let through with a warning.
    source_build = check([], SITE)
    assert source_build.error is None and source_build.warning is not None


def test_names_are_normalised_as_pip_does() -> None:
    assert normalise("onnxruntime_gpu") == normalise("ONNXRuntime-GPU") == "onnxruntime-gpu"


def test_this_environment_has_exactly_one_runtime() -> None:
    # A test venv has one extra's wheel (`cpu` from bootstrap.sh, `gpu` in gpu_check.sh's venv).
    runtimes = installed_runtimes()
    assert [r.name for r in runtimes] in (["onnxruntime"], ["onnxruntime-gpu"]), runtimes
    verdict = check_installed()
    assert verdict.error is None and verdict.runtime == runtimes[0]


def wheel(site: Path, name: str, files_of: str | None) -> None:
    """`name` 1.31.1's metadata in `site`, its RECORD listing its build file by hash; the package
    itself written as `files_of`'s build (None: not written, the metadata left alone)."""

    def build(owner: str) -> bytes:
        return f"package_name = '{owner}'\n__version__ = '1.31.1'\n".encode()

    digest = base64.urlsafe_b64encode(hashlib.sha256(build(name)).digest()).rstrip(b"=").decode()
    info = site / f"{name.replace('-', '_')}-1.31.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.31.1\n")
    (info / "RECORD").write_text(
        f"{BUILD_INFO},sha256={digest},{len(build(name))}\nonnxruntime/__init__.py,,\n"
    )
    if files_of is not None:
        (site / BUILD_INFO).parent.mkdir(parents=True, exist_ok=True)
        (site / BUILD_INFO).write_bytes(build(files_of))
        (site / "onnxruntime" / "__init__.py").write_text("")


def verdict_for(*sites: Path) -> object:
    path = [str(site) for site in sites]
    return check(installed_runtimes(path), imported_location(path))


def test_a_leftover_dist_info_ahead_on_the_path_is_named_as_such_not_as_the_wheel_in_use(
    tmp_path: Path,
) -> None:
    # onnxruntime-gpu's metadata without its files, in a folder ahead on sys.path (PYTHONPATH): it
    # was named "using onnxruntime-gpu" while the CPU wheel's module was what import loaded.
    fake, site = tmp_path / "fake", tmp_path / "site"
    wheel(fake, "onnxruntime-gpu", None)
    wheel(site, "onnxruntime", "onnxruntime")
    verdict = verdict_for(fake, site)
    assert verdict.error is None and verdict.runtime == Installed("onnxruntime", "1.31.1", str(site))
    assert verdict.warning is not None and "using onnxruntime-gpu" not in verdict.warning
    assert f"using onnxruntime 1.31.1 ({site}), whose files are the module imported" in verdict.warning
    assert (
        f"onnxruntime-gpu 1.31.1 ({fake}): metadata without its files (a leftover .dist-info"
        in verdict.warning
    )
    assert FIX in verdict.warning
    # Metadata alone, no module anywhere: the server stops with the fix.
    alone = verdict_for(fake)
    assert alone.runtime is None and alone.error is not None
    assert "no module `onnxruntime` can be imported" in alone.error and "leftover .dist-info" in alone.error
    assert FIX in alone.error


def test_both_wheels_in_one_folder_name_whose_files_the_module_now_is(tmp_path: Path) -> None:
    wheel(tmp_path, "onnxruntime", None)
    wheel(tmp_path, "onnxruntime-gpu", "onnxruntime-gpu")  # installed last: its files
    verdict = verdict_for(tmp_path)
    assert verdict.runtime is None and verdict.error is not None
    assert "the module `onnxruntime` there is now onnxruntime-gpu's" in verdict.error and FIX in verdict.error


def test_one_wheels_metadata_over_another_wheels_files_stops_the_server(tmp_path: Path) -> None:
    # The GPU wheel uninstalled after the CPU one overwrote it: the CPU metadata is left over files
    # that are not its own (here: the GPU build's), so which build would run is not known.
    wheel(tmp_path, "onnxruntime", "onnxruntime-gpu")
    verdict = verdict_for(tmp_path)
    assert verdict.runtime is None and verdict.error is not None
    assert f"is not the files onnxruntime 1.31.1 ({tmp_path}) installed" in verdict.error
    assert FIX in verdict.error


def test_this_processes_check_names_the_wheel_imported_past_a_leftover(tmp_path: Path) -> None:
    # A real interpreter, with the other wheel's leftover metadata first on sys.path (PYTHONPATH).
    ours = check_installed().runtime
    assert ours is not None
    other = "onnxruntime-gpu" if ours.name == "onnxruntime" else "onnxruntime"
    wheel(tmp_path, other, None)
    root = Path(__file__).resolve().parents[2]
    code = "from server.runtime_check import check_installed\nv = check_installed()\n"
    code += "print(v.runtime.name)\nprint(v.warning)"
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PYTHONPATH": f"{tmp_path}:{root}", "PATH": "/usr/bin:/bin"},
        check=True,
    )
    name, warning = done.stdout.splitlines()[:2]
    assert name == ours.name, done.stdout
    assert f"{other} 1.31.1 ({tmp_path}): metadata without its files" in warning


def test_serve_refuses_to_start_without_a_runtime(tmp_path: Path) -> None:
    # A real `sluiceway serve` in a process whose sys.path hides onnxruntime: it stops before
    # binding anything, with the message and exit code 2.
    shim = tmp_path / "sitecustomize.py"
    shim.write_text(  # hides the wheels' metadata and the module itself from the server process
        "import importlib.metadata, importlib.util\n"
        "real, find = importlib.metadata.distributions, importlib.util.find_spec\n"
        "importlib.metadata.distributions = lambda **kw: [d for d in real(**kw)"
        " if not (d.metadata['Name'] or '').lower().startswith('onnxruntime')]\n"
        "importlib.util.find_spec = lambda name, *a: None if name == 'onnxruntime' else find(name, *a)\n"
    )
    env = {"PYTHONPATH": f"{tmp_path}:{Path(__file__).resolve().parents[2]}", "PATH": "/usr/bin:/bin"}
    done = subprocess.run(
        [sys.executable, "-m", "server", "serve", "--port", "0", "--metrics-port", "0"],
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert "no onnxruntime is installed" in done.stderr and "ready" not in done.stdout


def test_preload_only_for_the_gpu_wheel_and_only_what_is_installed(tmp_path: Path) -> None:
    calls: list[str] = []
    loaded: list[str] = []

    def preload() -> None:
        calls.append("preload_dlls")

    def load(path: str) -> object:
        loaded.append(path)
        return object()

    # The CPU wheel: nothing is touched, whatever is installed.
    assert preload_for("onnxruntime", lambda: {"nvidia-cudnn-cu13"}, preload, lambda: tmp_path, load) == []
    assert calls == [] and loaded == []
    # The GPU wheel with libraries from the system (no NVIDIA wheels, no TensorRT wheel): nothing.
    assert preload_for("onnxruntime-gpu", lambda: {"numpy"}, preload, lambda: None, load) == []
    assert calls == []
    # With the `cuda` and `tensorrt` extras: onnxruntime's own preload, then TensorRT's two libraries.
    notes = preload_for(
        "onnxruntime-gpu",
        lambda: {"nvidia-cuda-runtime", "nvidia-cudnn-cu13"},
        preload,
        lambda: tmp_path,
        load,
    )
    assert calls == ["preload_dlls"]
    assert loaded == [str(tmp_path / name) for name in TENSORRT_LIBRARIES]
    assert len(notes) == 3 and "nvidia-cudnn-cu13" in notes[0]


def test_a_tensorrt_library_that_does_not_load_is_named(tmp_path: Path) -> None:
    def load(path: str) -> object:
        raise OSError(f"{path}: cannot open shared object file")

    notes = preload_for("onnxruntime-gpu", lambda: set(), lambda: None, lambda: tmp_path, load)
    assert len(notes) == len(TENSORRT_LIBRARIES)
    assert all("did not load" in note and "TensorRT provider will not start" in note for note in notes)


@pytest.mark.parametrize(
    ("providers", "listing", "expected"),
    [
        (
            ["CPUExecutionProvider"],
            "GPU 0: NVIDIA H200 (UUID: GPU-1)\n",
            "does not list CUDAExecutionProvider",
        ),
        ([CUDA_PROVIDER, "CPUExecutionProvider"], None, "nvidia-smi -L` is missing or failed"),
        ([CUDA_PROVIDER], "No devices found.\n", "lists no device"),
        ([CUDA_PROVIDER], "GPU 0: NVIDIA H200 (UUID: GPU-1)\n", None),
    ],
)
def test_gpu_tests_run_only_with_the_cuda_provider_and_a_device(
    providers: list[str], listing: str | None, expected: str | None
) -> None:
    reason = gpu_skip_reason(lambda: providers, lambda: listing)
    assert reason == expected if expected is None else (reason is not None and expected in reason)
