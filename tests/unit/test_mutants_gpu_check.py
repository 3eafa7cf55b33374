"""The GPU check's measuring parts (loadtest/gpu_check.py): the demo build's command, the raw providers,
the timed runs on a fake clock, the skipped rows, the raw rows over a fake onnxruntime, the log lines
about a model, the served rows from a fake load run, and the exit code (no GPU, no server, no clock)."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import loadtest.cli
import loadtest.ort_ceiling
from loadtest import gpu_check as gc
from loadtest.gpu_plan import PROVIDERS, Budget, Plan, plan_for
from loadtest.gpu_report import OUT_OF_TIME, RAW, SERVED, Report, Row

CUDA, TENSORRT, CPU = PROVIDERS
DRY = plan_for(dry=True)
GPU = plan_for(dry=False)
CPU_EP: tuple[str, dict[str, str]] = ("CPUExecutionProvider", {})
CUDA_EP: tuple[str, dict[str, str]] = ("CUDAExecutionProvider", {"device_id": "0"})


class FixedBudget(Budget):
    """A budget whose seconds left are the given values in turn (the last one from then on)."""

    def __init__(self, *left: float) -> None:
        super().__init__(0.0)
        self.values = list(left)

    def left(self) -> float:
        return self.values.pop(0) if len(self.values) > 1 else self.values[0]


def test_build_demo_runs_the_servers_builder_and_returns_its_last_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """`python -m server build-demo` with the cache directory set; the path is stdout's last line."""
    calls: list[tuple[Any, ...]] = []

    def fake_run(command: list[str], **kwargs: Any) -> types.SimpleNamespace:
        calls.append((command, kwargs))
        return types.SimpleNamespace(stdout="building\nstep 2\n/demo/models\n\n")

    monkeypatch.setattr(subprocess, "run", fake_run)
    monkeypatch.setenv("GPU_CHECK_MARK", "kept")
    assert gc.build_demo(tmp_path) == Path("/demo/models")
    [(command, kwargs)] = calls
    assert command == [sys.executable, "-m", "server", "build-demo"]
    assert kwargs == {
        "env": {**os.environ, "SLUICEWAY_CACHE_DIR": str(tmp_path)},
        "capture_output": True,
        "text": True,
        "timeout": 300,
        "check": True,
    }
    assert kwargs["env"]["GPU_CHECK_MARK"] == "kept"


def test_raw_providers_for_cpu_and_cuda() -> None:
    """The CPU alone; CUDA on device 0 before the CPU."""
    assert gc.raw_providers(CPU, None, GPU, Path("c")) == [CPU_EP]  # type: ignore[arg-type]
    assert gc.raw_providers(CUDA, None, GPU, Path("c")) == [CUDA_EP, CPU_EP]  # type: ignore[arg-type]


def test_raw_providers_for_tensorrt_take_the_configs_parameters_but_precision(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """TensorRT FP16 with the config's parameters (less precision_mode), then CUDA, then the CPU."""
    asked: list[tuple[Any, ...]] = []

    def fake_parameters(config: Any, rows: int, cache: Path) -> dict[str, str]:
        asked.append((config, rows, cache))
        return {"precision_mode": "FP16", "trt_engine_cache_enable": "1", "trt_profile_min_shapes": "x:1"}

    monkeypatch.setattr(gc, "tensorrt_parameters", fake_parameters)
    config = object()
    assert gc.raw_providers(TENSORRT, config, GPU, Path("c")) == [  # type: ignore[arg-type]
        (
            "TensorrtExecutionProvider",
            {"device_id": "0", "trt_fp16_enable": "1", "trt_engine_cache_enable": "1",
             "trt_profile_min_shapes": "x:1"},
        ),
        CUDA_EP,
        CPU_EP,
    ]  # fmt: skip
    assert asked == [(config, 64, Path("c"))]


class Clock:
    """perf_counter that moves only when the fake session runs."""

    def __init__(self) -> None:
        self.now = 1024.0

    def perf_counter(self) -> float:
        return self.now


class TimedSession:
    """A session whose runs take the given seconds in turn (the last one from then on)."""

    def __init__(self, clock: Clock, seconds: list[float]) -> None:
        self.clock, self.seconds = clock, seconds
        self.calls: list[tuple[Any, ...]] = []

    def run(self, *args: Any) -> None:
        self.calls.append(args)
        self.clock.now += self.seconds.pop(0) if len(self.seconds) > 1 else self.seconds[0]


def timed(
    monkeypatch: pytest.MonkeyPatch, seconds: list[float], plan: Plan, rows: int = 4
) -> tuple[Any, ...]:
    clock = Clock()
    monkeypatch.setattr(gc, "time", clock)
    session = TimedSession(clock, seconds)
    inputs = {"x": np.zeros((rows, 3)), "y": np.zeros((1, 2))}
    return gc.time_runs(session, inputs, plan), session, inputs


def test_time_runs_warms_up_twice_then_runs_for_the_time_box(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two warm-up runs not timed; runs until raw_s has passed; rows/s and p50/p99 in ms."""
    plan = dataclasses.replace(DRY, raw_s=39.453125, min_runs=1)
    seconds = [7.0, 7.0, *(i / 128 for i in range(1, 101))]  # exact in binary: 39.453125 s in all
    (rate, p50, p99), session, inputs = timed(monkeypatch, seconds, plan, rows=4)
    assert len(session.calls) == 102
    assert all(call == (None, inputs) for call in session.calls)
    assert rate == pytest.approx(4 * 100 / 39.453125)
    assert p50 == pytest.approx(50.5 * 7.8125) and p99 == pytest.approx(99.01 * 7.8125)
    assert isinstance(p50, float) and isinstance(p99, float)


def test_time_runs_does_at_least_min_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    """min_runs holds when the time box passed after the first run."""
    plan = dataclasses.replace(DRY, raw_s=0.5, min_runs=3)
    (rate, _, _), session, _ = timed(monkeypatch, [1.0], plan, rows=2)
    assert len(session.calls) == 5 and rate == pytest.approx(2.0)


def test_time_runs_stops_at_max_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    """However long the time box, 200,000 runs at most."""
    plan = dataclasses.replace(DRY, raw_s=10.0, min_runs=1)
    _, session, _ = timed(monkeypatch, [2**-30], plan)
    assert len(session.calls) == 2 + 200_000


def test_skipped_rows_with_and_without_raw() -> None:
    """Every model's raw batches then served levels, each with the note; none raw when not `raw`."""
    served = [Row(m, "L", SERVED, n, note="why") for m in ("resnet", "resnet_u8", "mlp") for n in (1, 2)]
    raw = [Row(m, "L", RAW, b, note="why") for m in ("resnet", "resnet_u8", "mlp") for b in (1, 2)]
    assert gc.skipped("L", DRY, "why") == raw + served
    assert gc.skipped("L", DRY, "why", raw=False) == served


def test_mentions_each_way_a_log_line_names_a_model() -> None:
    """Its config path, an instance's name, `model X:` and the quoted name; not a longer name."""
    assert gc.mentions("load /repo/mlp/config.pbtxt", "mlp")
    assert gc.mentions("instance 'mlp_0' fell back", "mlp")
    assert gc.mentions("model mlp: CPU", "mlp")
    assert gc.mentions("loading 'mlp'", "mlp")
    assert not gc.mentions("/repo/mlpx/ 'mlpx' model mlpx: mlp_ mlp", "mlp")


class FakeOrt:
    """onnxruntime's providers and InferenceSession, recording the session asked for."""

    def __init__(self, available: list[str], active: str, error: Exception | None = None) -> None:
        self.available, self.active, self.error = available, active, error
        self.sessions: list[tuple[Any, ...]] = []

    def get_available_providers(self) -> list[str]:
        return list(self.available)

    def InferenceSession(self, path: str, **kwargs: Any) -> Any:
        self.sessions.append((path, kwargs))
        if self.error is not None:
            raise self.error
        self.made = types.SimpleNamespace(get_providers=lambda: [self.active, "CPUExecutionProvider"])
        return self.made


def raw_of(
    monkeypatch: pytest.MonkeyPatch, ort: FakeOrt, provider: Any, budget: Budget, fail: int = 0
) -> tuple[list[Row], list[tuple[Any, ...]]]:
    """raw_rows over a fake onnxruntime, config, feeds and time_runs; returns the rows and the runs."""
    runs: list[tuple[Any, ...]] = []
    monkeypatch.setitem(sys.modules, "onnxruntime", ort)
    monkeypatch.setattr(gc, "load_config", lambda path: ("config", path))
    monkeypatch.setattr(
        loadtest.ort_ceiling, "feeds", lambda s, batch, rng: {"batch": batch, "draw": rng.random(), "fed": s}
    )

    def fake_time_runs(session: Any, inputs: dict[str, Any], plan: Plan) -> tuple[float, float, float]:
        runs.append(({**inputs, "timed": session}, plan))
        if inputs["batch"] == fail:
            raise MemoryError("out of memory\nmore")
        return 10.0 * inputs["batch"], 1.5, 2.5

    monkeypatch.setattr(gc, "time_runs", fake_time_runs)
    return gc.raw_rows(Path("/copy/mlp"), provider, GPU, Path("/trt"), budget), runs


def test_raw_rows_on_the_asked_provider(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every batch measured with the available providers only; feeds from one rng seeded 0."""
    ort = FakeOrt(["CUDAExecutionProvider", "CPUExecutionProvider"], "CUDAExecutionProvider")
    asked: list[tuple[Any, ...]] = []
    real = gc.raw_providers

    def recorded(*args: Any) -> list[Any]:
        asked.append(args)
        return real(*args)

    monkeypatch.setattr(gc, "raw_providers", recorded)
    rows, runs = raw_of(monkeypatch, ort, CUDA, FixedBudget(6.5))
    assert asked == [(CUDA, ("config", Path("/copy/mlp/config.pbtxt")), GPU, Path("/trt"))]
    assert rows == [Row("mlp", "CUDA", RAW, b, 10.0 * b, float(b), 1.5, 2.5, "") for b in (1, 8, 32, 64)]
    assert ort.sessions == [
        (
            "/copy/mlp/1/model.onnx",
            {"providers": ["CUDAExecutionProvider", "CPUExecutionProvider"],
             "provider_options": [{"device_id": "0"}, {}]},
        )
    ]  # fmt: skip
    draws = np.random.default_rng(0).random(4)
    assert [inputs["draw"] for inputs, _ in runs] == list(draws)
    assert all(plan is GPU for _, plan in runs)
    assert all(inputs["fed"] is ort.made and inputs["timed"] is ort.made for inputs, _ in runs)


def test_raw_rows_name_a_provider_not_in_the_build(monkeypatch: pytest.MonkeyPatch) -> None:
    """A provider onnxruntime lacks is left out of the session, and every row says so."""
    ort = FakeOrt(["CPUExecutionProvider"], "CPUExecutionProvider")
    rows, _ = raw_of(monkeypatch, ort, CUDA, FixedBudget(100.0))
    note = "ran on CPUExecutionProvider (CUDAExecutionProvider: not in this onnxruntime build)"
    assert [r.note for r in rows] == [note] * 4
    assert ort.sessions[0][1] == {"providers": ["CPUExecutionProvider"], "provider_options": [{}]}


def test_raw_rows_name_a_provider_that_did_not_start(monkeypatch: pytest.MonkeyPatch) -> None:
    """An available provider not active: `did not start`."""
    ort = FakeOrt(["CUDAExecutionProvider", "CPUExecutionProvider"], "CPUExecutionProvider")
    rows, _ = raw_of(monkeypatch, ort, CUDA, FixedBudget(100.0))
    note = "ran on CPUExecutionProvider (CUDAExecutionProvider: did not start)"
    assert [r.note for r in rows] == [note] * 4


def test_raw_rows_without_a_session(monkeypatch: pytest.MonkeyPatch) -> None:
    """A session that cannot start: one row per batch with its first line."""
    ort = FakeOrt(["CPUExecutionProvider"], "CPUExecutionProvider", RuntimeError("bad model\ndetail"))
    rows, runs = raw_of(monkeypatch, ort, CPU, FixedBudget(100.0))
    assert rows == [Row("mlp", "CPU", RAW, b, note="no session: bad model") for b in (1, 8, 32, 64)]
    assert runs == []


def test_raw_rows_out_of_time_and_failed_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    """Under raw_s + 5 s left a batch is skipped; a run that raises gives its first line."""
    ort = FakeOrt(["CPUExecutionProvider"], "CPUExecutionProvider")
    rows, runs = raw_of(monkeypatch, ort, CPU, FixedBudget(6.49, 6.5, 6.5, 6.49), fail=8)
    assert rows == [
        Row("mlp", "CPU", RAW, 1, note=OUT_OF_TIME),
        Row("mlp", "CPU", RAW, 8, note="run failed: out of memory"),
        Row("mlp", "CPU", RAW, 32, 320.0, 32.0, 1.5, 2.5, ""),
        Row("mlp", "CPU", RAW, 64, note=OUT_OF_TIME),
    ]
    assert [inputs["batch"] for inputs, _ in runs] == [8, 32]


def verdict_of(report: Report, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = gc.verdict(report)
    return code, capsys.readouterr().err


def test_verdict_zero_when_all_measured(capsys: pytest.CaptureFixture[str]) -> None:
    """Measured rows, other notes and other log lines: exit 0, nothing said."""
    report = Report(False, rows=[Row("mlp", "CUDA", SERVED, 1, 5.0, note="2 errors")], log=["[CUDA] ok"])
    assert verdict_of(report, capsys) == (0, "")


def test_verdict_one_for_cpu_figures(capsys: pytest.CaptureFixture[str]) -> None:
    """GPU providers whose rows ran on the CPU are named, first."""
    rows = [Row("mlp", p, RAW, 1, note="ran on CPUExecutionProvider (x)") for p in ("CUDA", "TensorRT FP16")]
    report = Report(False, rows=[*rows, Row("mlp", "CUDA", SERVED, 1, note=OUT_OF_TIME)])
    assert verdict_of(report, capsys) == (
        1,
        "gpu_check: CUDA, TensorRT FP16 did not start: those rows are CPU figures\n",
    )


def test_verdict_one_for_points_not_measured(capsys: pytest.CaptureFixture[str]) -> None:
    """Stopped checks, then each provider and note not served or out of time, once each, sorted."""
    rows = [
        Row("mlp", "CUDA", SERVED, 1, note=gc.NOT_SERVED),
        Row("resnet", "CUDA", SERVED, 1, note=gc.NOT_SERVED),
        Row("mlp", "CPU", RAW, 1, note=OUT_OF_TIME),
        Row("mlp", "CPU", RAW, 2, note="run failed: x"),
    ]
    log = ["[CUDA] check stopped: OSError: x", "[CPU] stopped by SIGTERM (the time limit)", "[CPU] fine"]
    assert verdict_of(Report(True, rows=rows, log=log), capsys) == (
        1,
        "gpu_check: not every point was measured: [CUDA] check stopped: OSError: x; [CPU] stopped by "
        "SIGTERM (the time limit); CPU: skipped: time budget spent; CUDA: server did not start\n",
    )
    assert verdict_of(Report(True, log=log[1:]), capsys)[0] == 1
    assert verdict_of(Report(True, rows=rows[2:]), capsys)[0] == 1


def test_stopped_handler_raises_stopped() -> None:
    """The SIGTERM handler raises Stopped."""
    with pytest.raises(gc.Stopped):
        gc._stopped(15, None)


ADDRESS = "127.0.0.1:7001"
SERVED_PLAN = dataclasses.replace(DRY, warmup_s=0.25, served_s=1.25, processes=3)  # 22.0 s needed


def entry(
    model: str,
    level: int,
    server: dict[str, Any],
    errors: int = 0,
    p50: float | None = 1500.0,
    p99: float | None = 4250.0,
) -> Any:
    """One result of sluiceway-loadtest's run, as its JSON has it."""
    return {
        "target": model, "step": {"level": str(level)},
        "errors": {"UNAVAILABLE": errors, "OTHER": 2 * errors}, "latency_us": {"p50": p50, "p99": p99},
        "server": server, "throughput_rps": 100.0 * level,
    }  # fmt: skip


def served_of(
    monkeypatch: pytest.MonkeyPatch, results: list[Any] | Exception, plan: Plan = SERVED_PLAN,
    left: float = 22.0, warnings: tuple[str, ...] = (), metrics_url: str | None = None,
) -> tuple[list[Row], list[list[str]]]:  # fmt: skip
    """served_rows with sluiceway-loadtest's parser and run replaced; returns the rows and argv run."""
    calls: list[list[str]] = []

    def fake_run(argv: list[str]) -> dict[str, Any]:
        calls.append(argv)
        if isinstance(results, Exception):
            raise results
        return {"results": results}

    monkeypatch.setattr(loadtest.cli, "build_parser", lambda: types.SimpleNamespace(parse_args=lambda a: a))
    monkeypatch.setattr(loadtest.cli, "run", fake_run)
    budget = FixedBudget(left)
    return gc.served_rows(ADDRESS, CUDA, plan, budget, list(warnings), metrics_url), calls


def test_served_rows_ask_the_load_generator_for_every_model_and_level(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The exact command line, with /metrics where known; one server process: its batch and changes."""
    server = {"avg_batch_size": 1.75, "metrics": {"padded_shape_changes": 4.4}}
    results = [
        entry("mlp", 2, server), entry("resnet_u8", 1, {"avg_batch_size": 1.0}, errors=1, p50=None, p99=None),
        entry("resnet", 2, {"avg_batch_size": 2.0, "metrics": None}), entry("resnet", 1, server),
    ]  # fmt: skip
    rows, calls = served_of(monkeypatch, results, warnings=("model mlp: fell back",), metrics_url="http://m")
    assert calls == [
        ["--compare", f"resnet={ADDRESS}/resnet,resnet_u8={ADDRESS}/resnet_u8,mlp={ADDRESS}/mlp",
         "--model", "resnet", "--concurrency", "1,2", "--duration-s", "1.25", "--warmup-s", "0.25",
         "--rounds", "1", "--processes", "3", "--connections", "1", "--seed", "1", "--quiet",
         "--server-metrics", "http://m"]
    ]  # fmt: skip
    label = "CPU (dry run of the CUDA config)"
    assert rows == [
        Row("resnet", label, SERVED, 1, 100.0, 1.75, 1.5, 4.25, "4 padded shape changes"),
        Row("resnet", label, SERVED, 2, 200.0, 2.0, 1.5, 4.25, ""),
        Row("resnet_u8", label, SERVED, 1, 100.0, 1.0, None, None, "3 errors"),
        Row("mlp", label, SERVED, 2, 200.0, 1.75, 1.5, 4.25,
            "server warned: see Server warnings; 4 padded shape changes"),
    ]  # fmt: skip


def test_served_rows_under_several_workers_drop_batch_and_changes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two server processes: a connection per user, no avg batch, no shape changes; no /metrics flag."""
    plan = dataclasses.replace(SERVED_PLAN, server_workers=2, processes=1)
    server = {"avg_batch_size": 1.75, "metrics": {"padded_shape_changes": 4.0, "shared_runs": 0}}
    rows, calls = served_of(monkeypatch, [entry("mlp", 2, server, errors=2)], plan=plan)
    assert calls[0][-7:] == ["--processes", "1", "--connections", "2", "--seed", "1", "--quiet"]
    assert rows == [Row("mlp", plan.label(CUDA), SERVED, 2, 200.0, None, 1.5, 4.25, "6 errors")]


def test_served_rows_with_shared_sessions_take_the_hosts_counts(monkeypatch: pytest.MonkeyPatch) -> None:
    """The session host's rows per run are the batch, and its changes count, under any workers."""
    plan = dataclasses.replace(SERVED_PLAN, server_workers=2)
    shared = {"shared_runs": 4, "shared_rows": 10.0, "padded_shape_changes": 2.0}
    results = [entry("resnet", 1, {"metrics": shared}), entry("mlp", 1, {"metrics": {"shared_runs": 5}})]
    rows, _ = served_of(monkeypatch, results, plan=plan)
    assert [(r.model, r.avg_batch, r.note) for r in rows] == [
        ("resnet", 2.5, "2 padded shape changes"),
        ("mlp", 0.0, ""),
    ]


def test_served_rows_out_of_time_or_failed(monkeypatch: pytest.MonkeyPatch) -> None:
    """Under the points' time plus 10 s every level is skipped; a failed run says why."""
    label = SERVED_PLAN.label(CUDA)
    assert served_of(monkeypatch, [], left=21.99) == (
        gc.skipped(label, SERVED_PLAN, OUT_OF_TIME, raw=False),
        [],
    )
    rows, calls = served_of(monkeypatch, [], left=22.0)
    assert rows == [] and len(calls) == 1
    rows, _ = served_of(monkeypatch, RuntimeError("worker 2 did not report\nmore"))
    assert rows == gc.skipped(label, SERVED_PLAN, "load run failed: worker 2 did not report", raw=False)
