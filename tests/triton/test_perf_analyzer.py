"""NVIDIA's perf_analyzer, an outside client, drives a real server for a few seconds.

It calls ServerMetadata, ModelMetadata, ModelConfig and ModelStatistics besides ModelInfer, so a
clean run checks those too. Skipped with the reason when the tool cannot start here.
"""

from __future__ import annotations

import csv
import os
import subprocess
import uuid
from pathlib import Path

import pytest
import tritonclient.grpc

from tests.support.ensemble_repo import ensemble_repository
from tests.support.server_process import REPO_ROOT, ServerProcess

# SLUICEWAY_PERF_ANALYZER names it elsewhere (a git worktree has no ../shared of its own).
PERF_ANALYZER = Path(
    os.environ.get("SLUICEWAY_PERF_ANALYZER", REPO_ROOT.parent / "shared" / "tools" / "perf_analyzer")
)
SHM = Path("/dev/shm")
NOT_FOUND = f"perf_analyzer wrapper not found at {PERF_ANALYZER}"
# Above the suite's 120 s: on a fresh machine the first test also waits for the tool's set-up.
# Without the wrapper every test skips before its fixtures: the session-scoped servers they ask for
# are set up before the module-scoped `perf_analyzer` check, and two servers had started (~2 CPU s,
# ~7 s of a worker) only to be skipped.
pytestmark = [pytest.mark.timeout(720), pytest.mark.skipif(not PERF_ANALYZER.exists(), reason=NOT_FOUND)]


def remove_regions_left(before: set[Path], tensors: tuple[str, ...]) -> list[Path]:
    """Unlink the system shared-memory regions perf_analyzer made and left (a run that fails exits
    without removing them): files named after the model's tensors, `features_0_0` for an input and
    `scores` for an output. Only those: a folder or region another test made meanwhile on another
    worker is that test's to remove (a CI run failed unlinking a host backend's folder)."""
    removed = []
    for left in set(SHM.iterdir()) - before:
        ours = any(left.name == name or left.name.startswith(f"{name}_") for name in tensors)
        if ours and left.is_file():
            left.unlink(missing_ok=True)
            removed.append(left)
    return removed


@pytest.fixture(scope="module")
def perf_analyzer() -> Path:
    if not PERF_ANALYZER.exists():
        pytest.skip(NOT_FOUND)
    try:
        # The first call sets the tool up (downloads its wheel and runtime libraries).
        probe = subprocess.run([str(PERF_ANALYZER)], capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as exc:
        pytest.skip(f"perf_analyzer cannot start here: {exc}")
    said = probe.stdout + probe.stderr
    # With no arguments it exits complaining about -m: that proves the binary runs.
    if "model name" not in said and "Usage" not in said:
        pytest.skip(f"perf_analyzer cannot start here: {said[-500:]}")
    return PERF_ANALYZER


@pytest.mark.parametrize(
    ("model", "extra"),
    [("mlp", []), ("mlp", ["--streaming"]), ("resnet", [])],
    ids=["mlp-unary", "mlp-streaming", "resnet-unary"],
)
def test_perf_analyzer_runs_cleanly(
    perf_analyzer: Path, demo_server: ServerProcess, tmp_path: Path, model: str, extra: list[str]
) -> None:
    report = tmp_path / "report.csv"
    concurrency = "2" if model == "resnet" else "1:8:7"
    command = [
        str(perf_analyzer),
        "-m", model,
        "-u", demo_server.address,
        "-i", "grpc",
        "--concurrency-range", concurrency,
        "--measurement-interval", "1500",
        "--max-trials", "4",
        "--stability-percentage", "999",
        "-f", str(report),
        *extra,
    ]  # fmt: skip
    run = subprocess.run(command, capture_output=True, text=True, timeout=300)
    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-3000:]
    assert "error" not in output.lower() or "0 errors" in output.lower(), output[-3000:]
    rows = list(csv.DictReader(report.open()))
    assert rows, output[-2000:]
    for row in rows:
        assert float(row["Inferences/Second"]) > 0


def test_only_perf_analyzers_regions_are_removed() -> None:
    """A region named after a tensor goes; a folder of that name, another name and what was there
    before stay (a test on another worker may be using them)."""
    tensor = f"pa_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    old = SHM / f"{tensor}_0_1"
    old.write_bytes(b"before")
    before = set(SHM.iterdir())
    regions = [SHM / f"{tensor}_0_0", SHM / tensor]
    others = [SHM / f"{tensor}x", SHM / f"other_{tensor}"]
    folder = SHM / f"{tensor}_1_0"
    try:
        for path in regions + others:
            path.write_bytes(b"x")
        folder.mkdir()
        assert sorted(remove_regions_left(before, (tensor,))) == sorted(regions)
        assert not any(path.exists() for path in regions)
        assert all(path.exists() for path in [*others, folder, old])
    finally:
        for path in [*regions, *others, old]:
            path.unlink(missing_ok=True)
        folder.rmdir()


def test_perf_analyzer_with_system_shared_memory(
    perf_analyzer: Path, shm_server: ServerProcess, demo_server: ServerProcess, tmp_path: Path
) -> None:
    """Inputs and outputs through system shared memory (perf_analyzer registers its own regions);
    against a server that does not allow client shared memory the same run fails, which shows the
    first one really used it."""
    report = tmp_path / "report.csv"
    base = [
        str(perf_analyzer),
        "-m", "resnet_u8",
        "-i", "grpc",
        "--shared-memory", "system",
        "--concurrency-range", "2",
        "--measurement-interval", "1500",
        "--max-trials", "4",
        "--stability-percentage", "999",
    ]  # fmt: skip
    run = subprocess.run(
        [*base, "-u", shm_server.address, "-f", str(report)], capture_output=True, text=True, timeout=300
    )
    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-3000:]
    rows = list(csv.DictReader(report.open()))
    assert rows and float(rows[0]["Inferences/Second"]) > 0, output[-2000:]
    before = set(SHM.iterdir())
    refused = subprocess.run([*base, "-u", demo_server.address], capture_output=True, text=True, timeout=300)
    remove_regions_left(before, ("frame", "logits"))
    assert refused.returncode != 0
    assert "client shared memory is disabled" in refused.stdout + refused.stderr


@pytest.mark.parametrize("model", ["linear", "a_nested"])
def test_perf_analyzer_profiles_an_ensemble(perf_analyzer: Path, tmp_path: Path, model: str) -> None:
    """perf_analyzer picks the version whose queue count moved during its run; an ensemble's stayed
    0, so it failed "failed to find the requested model version" (nested ones even with -x 1)."""
    (tmp_path / "files").mkdir()
    repo = ensemble_repository(tmp_path / "repo", tmp_path / "files")
    with ServerProcess("--model-repository", str(repo), "--allow-fault-injection") as server:
        command = [
            str(perf_analyzer),
            "-m", model,
            "-u", server.address,
            "-i", "grpc",
            "--concurrency-range", "2",
            "--measurement-interval", "1500",
            "--max-trials", "4",
            "--stability-percentage", "999",
        ]  # fmt: skip
        run = subprocess.run(command, capture_output=True, text=True, timeout=300)
    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-3000:]
    assert "failed to find the requested model version" not in output


def test_perf_analyzer_sets_trace_options_and_runs(perf_analyzer: Path) -> None:
    """--trace-level/--trace-rate/--trace-count call TraceSetting before the run; its UNIMPLEMENTED
    "Method not found!" had ended the whole run (rc 99). The settings stay as it set them."""
    with ServerProcess("--tracing", "--tracing-exporter", "none") as server:
        command = [
            str(perf_analyzer),
            "-m", "mlp",
            "-u", server.address,
            "-i", "grpc",
            "--concurrency-range", "1",
            "--measurement-interval", "1500",
            "--max-trials", "4",
            "--stability-percentage", "999",
            "--trace-level", "TIMESTAMPS",
            "--trace-rate", "100",
            "--trace-count", "-1",
        ]  # fmt: skip
        run = subprocess.run(command, capture_output=True, text=True, timeout=300)
        with tritonclient.grpc.InferenceServerClient(server.address) as client:
            shown = client.get_trace_settings(as_json=True)["settings"]
    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-3000:]
    assert "Method not found" not in output
    assert shown["trace_rate"]["value"] == ["100"] and shown["trace_level"]["value"] == ["TIMESTAMPS"]
