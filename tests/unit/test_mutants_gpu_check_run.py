"""The GPU check's orchestration (loadtest/gpu_check.py): check_provider's order of copy, raw rows, server
start and served rows with the log it writes, and main's flags, context and loop, with the repository
copy, the server, the load runs, perf_analyzer and the report's writer replaced by recording fakes."""

from __future__ import annotations

import dataclasses
import signal
import sys
import types
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from loadtest import gpu_check as gc
from loadtest.gpu_perf_analyzer import skipped_rows
from loadtest.gpu_plan import PROVIDERS, Plan, plan_for
from loadtest.gpu_report import OUT_OF_TIME, RAW, SERVED, Report, Row
from loadtest.server import DEFAULT_CACHE_DIR
from tests.unit.test_mutants_gpu_perf_analyzer import FixedBudget

CUDA, TENSORRT, CPU = PROVIDERS
GPU = plan_for(dry=False)
TOOL = Path("pa")
WORDS = ["a not available\n", "b falling back\n", "c running on X\n", "d instead\n"]
TAIL = [
    *WORDS,
    *(f"w{i} fell back  \n" for i in range(18)),
    "ok\n",
    *(f"m{i} padded batches\n" for i in range(4)),
]


class FakeServer:
    """SpawnedServer: records how it was made, started and stopped; its tail grows at the stop."""

    made: list[FakeServer] = []
    error: RuntimeError | None = None

    def __init__(self, cache_dir: Path, extra: list[str], watch: tuple[str, ...] = ()) -> None:
        self.args = (cache_dir, extra, watch)
        self.events: list[Any] = []
        self.tail = list(TAIL)
        self.seen = Counter({"WARNING": 3, "[W:onnxruntime": 1})
        self.address, self.metrics_url = "127.0.0.1:7", "http://127.0.0.1:9"
        FakeServer.made.append(self)

    def start(self, timeout_s: float) -> None:
        self.events.append(("start", timeout_s))
        if FakeServer.error is not None:
            raise FakeServer.error

    def stop(self) -> None:
        self.events.append("stop")
        self.tail += [f"shared session ran {i} runs \n" for i in range(4)]


class Check:
    """check_provider's collaborators replaced, each call recorded in one list."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.work = tmp_path / "work"
        self.report = Report(False)
        FakeServer.made, FakeServer.error = [], None
        monkeypatch.setattr(gc, "SpawnedServer", FakeServer)
        monkeypatch.setattr(gc, "time", types.SimpleNamespace(monotonic=iter([50.0, 62.34]).__next__))
        monkeypatch.setattr(gc, "tensorrt_missing", lambda: self.record("missing") or self.missing)
        monkeypatch.setattr(gc, "write_copy", lambda *a: self.record("copy", *a, (a[1] / "stale").exists()))
        monkeypatch.setattr(
            gc, "raw_rows", lambda d, *a: self.record("raw", d, *a) or [Row(d.name, "L", RAW, 1)]
        )
        monkeypatch.setattr(
            gc, "served_rows", lambda *a: self.record("served", *a) or [Row("s", "L", SERVED, 1)]
        )
        monkeypatch.setattr(
            gc, "perf_analyzer_rows", lambda *a: self.record("pa", *a) or [Row("p", "L", "pa", 2)]
        )
        self.missing: str | None = None

    def record(self, *call: Any) -> bool:
        """Records the call; False, so that `record(...) or value` gives the value."""
        self.calls.append(call)
        return False

    def run(self, provider: Any, plan: Plan, left: float = 1000.0, tool: Path | None = TOOL) -> FixedBudget:
        budget = FixedBudget(left)
        gc.check_provider(Path("/demo"), self.work, provider, plan, budget, self.report, tool)
        return budget


def test_check_provider_on_cuda_in_order(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A fresh copy, raw rows per model, the server with its flags, the log, served and perf_analyzer rows."""
    check = Check(monkeypatch, tmp_path)
    plan = dataclasses.replace(GPU, server_workers=2, server_args=("--x=y",))
    (check.work / "repository-cuda").mkdir(parents=True)
    (check.work / "repository-cuda" / "stale").write_text("")
    budget = check.run(CUDA, plan)
    copy, cache = check.work / "repository-cuda", (check.work / "server-cache" / "tensorrt-shared").resolve()
    assert cache.is_dir()
    [server] = FakeServer.made
    warned = [line.rstrip() for line in TAIL[:22]]
    assert check.calls == [
        ("copy", Path("/demo"), copy, CUDA, plan, cache, False),
        *(("raw", copy / m, CUDA, plan, cache, budget) for m in ("resnet", "resnet_u8", "mlp")),
        ("served", server.address, CUDA, plan, budget, warned, server.metrics_url),
        ("pa", TOOL, server.address, "CUDA", plan, budget, server.metrics_url),
    ]  # fmt: skip
    extra = ["--model-repository", str(copy), "--allow-client-shm", "--workers", "2", "--x=y"]
    assert server.args == (check.work / "server-cache", extra, gc.COUNTED)
    assert server.events == [("start", 240.0), "stop"]
    assert check.report.log == [
        "[CUDA] server ready in 12.3 s (loads and warm-ups)",
        *(f"[CUDA] {line.rstrip()}" for line in TAIL[:20]),
        "[CUDA] m0 padded batches", "[CUDA] m1 padded batches", "[CUDA] m2 padded batches",
        "[CUDA] server output lines until ready: 3 'WARNING', 1 '[W:onnxruntime', 0 '[E:onnxruntime'",
        *(f"[CUDA] shared session ran {i} runs" for i in range(3)),
    ]  # fmt: skip
    assert [r.model for r in check.report.rows] == ["resnet", "resnet_u8", "mlp", "s", "p"]


def test_check_provider_on_the_cpu_without_perf_analyzer(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The CPU series: no client shm, no perf_analyzer, one worker; the start waits what the budget holds."""
    check = Check(monkeypatch, tmp_path)
    check.run(CPU, GPU, left=100.0)
    [server] = FakeServer.made
    assert server.args[1] == ["--model-repository", str(check.work / "repository-cpu")]
    assert server.events == [("start", 80.0), "stop"]
    assert [call[0] for call in check.calls] == ["copy", "raw", "raw", "raw", "served"]


def test_check_provider_starts_with_ten_seconds_left_to_wait(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """30 s left: a start of 10 s is tried; under that the served points are skipped."""
    check = Check(monkeypatch, tmp_path)
    check.run(CUDA, GPU, left=30.0)
    assert FakeServer.made[0].events[0] == ("start", 10.0)
    for provider, tool in ((CUDA, TOOL), (CPU, TOOL), (CUDA, None)):
        check = Check(monkeypatch, tmp_path)
        check.run(provider, GPU, left=29.99, tool=tool)
        label = provider.label
        pa = skipped_rows(label, GPU, OUT_OF_TIME) if provider is CUDA and tool else []
        assert check.report.rows[3:] == [*gc.skipped(label, GPU, OUT_OF_TIME, raw=False), *pa]
        assert FakeServer.made == [] and check.report.log == []


@pytest.mark.parametrize(
    ("message", "said"),
    [("sluiceway server did not start:\nfirst\nlast line \n", "last line"), ("", "(no output)")],
)
def test_check_provider_when_the_server_does_not_start(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, message: str, said: str
) -> None:
    """The server's last output line is logged; served and perf_analyzer points say it did not start."""
    check = Check(monkeypatch, tmp_path)
    FakeServer.error = RuntimeError(message)
    check.run(CUDA, GPU)
    assert check.report.log == [f"[CUDA] server did not start: {said}"]
    skipped = [*gc.skipped("CUDA", GPU, gc.NOT_SERVED, raw=False), *skipped_rows("CUDA", GPU, gc.NOT_SERVED)]
    assert check.report.rows[3:] == skipped
    assert FakeServer.made[0].events == [("start", 240.0)]
    check = Check(monkeypatch, tmp_path)
    FakeServer.error = RuntimeError(message)
    check.run(CUDA, GPU, tool=None)
    assert check.report.rows[3:] == gc.skipped("CUDA", GPU, gc.NOT_SERVED, raw=False)


def test_check_provider_skips_tensorrt_without_its_library(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A GPU run without TensorRT's library: every point skipped with why, nothing copied or started."""
    check = Check(monkeypatch, tmp_path)
    check.missing = "no libnvinfer"
    check.run(TENSORRT, GPU)
    label, note = "TensorRT FP16", "skipped: no libnvinfer"
    assert check.report.log == [f"[{label}] not measured: no libnvinfer"]
    assert check.report.rows == [*gc.skipped(label, GPU, note), *skipped_rows(label, GPU, note)]
    assert check.calls == [("missing",)]
    check = Check(monkeypatch, tmp_path)
    check.missing = "no libnvinfer"
    check.run(TENSORRT, GPU, tool=None)
    assert check.report.rows == gc.skipped(label, GPU, note)


def test_check_provider_asks_for_tensorrt_only_on_a_gpu_run(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """No library check for CUDA or a dry run; TensorRT with its library goes on."""
    for provider, plan in ((CUDA, GPU), (TENSORRT, plan_for(dry=True)), (TENSORRT, GPU)):
        check = Check(monkeypatch, tmp_path)
        check.run(provider, plan)
        names = [call[0] for call in check.calls]
        assert names[:2] == (["missing", "copy"] if plan is GPU and provider is TENSORRT else ["copy", "raw"])
        assert names[-1] == "pa"


class Main:
    """main's collaborators replaced: onnxruntime, the demo build, the budget, the signal, each check,
    the context and the writer; `raises` maps a provider key to what its check raises."""

    def __init__(
        self, monkeypatch: pytest.MonkeyPatch, providers: tuple[str, ...] = ("CUDAExecutionProvider",)
    ):
        self.calls: list[tuple[Any, ...]] = []
        self.raises: dict[str, BaseException] = {}
        self.budget = FixedBudget(123.4)
        self.budgets: list[Any] = []
        ort = types.SimpleNamespace(get_available_providers=lambda: [*providers, "CPUExecutionProvider"])
        monkeypatch.setitem(sys.modules, "onnxruntime", ort)
        monkeypatch.delenv("GPU_CHECK_DRY", raising=False)
        monkeypatch.delenv("OUT", raising=False)
        monkeypatch.setattr(gc, "build_demo", lambda cache: self.record("demo", cache) or Path("/demo"))
        monkeypatch.setattr(gc, "Budget", lambda seconds: self.record("budget", seconds) or self.budget)
        monkeypatch.setattr(signal, "signal", lambda *a: self.record("signal", *a))
        monkeypatch.setattr(gc, "machine_context", lambda *a: self.record("context", *a) or ["ctx"])
        monkeypatch.setattr(gc, "perf_analyzer_context", lambda *a: self.record("pa context", *a) or "pa ctx")
        monkeypatch.setattr(gc, "check_provider", self.check)
        monkeypatch.setattr(
            gc, "write", lambda *a: self.record("write", *a) or (Path("t.md"), Path("t.json"))
        )

    def record(self, *call: Any) -> bool:
        """Records the call; False, so that `record(...) or value` gives the value."""
        self.calls.append(call)
        return False

    def check(
        self, demo: Path, work: Path, provider: Any, plan: Plan, budget: Any, report: Report, tool: Any
    ) -> None:
        self.record("check", demo, work, provider.key, plan, tool)
        self.report = report
        self.budgets.append(budget)
        if provider.key in self.raises:
            raise self.raises[provider.key]


def test_main_dry_run_with_the_defaults(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """--dry: every provider in order with the default plan, budget, folders and the SIGTERM handler."""
    main = Main(monkeypatch, providers=())
    assert gc.main(["--dry"]) == 0
    plan = plan_for(True, 1, 4, 1)
    work = DEFAULT_CACHE_DIR / "gpu_check"
    report = main.report
    assert main.calls == [
        ("budget", 330.0), ("context", plan, None), ("signal", signal.SIGTERM, gc._stopped),
        ("demo", DEFAULT_CACHE_DIR),
        *(("check", Path("/demo"), work, key, plan, None) for key in ("cuda", "tensorrt", "cpu")),
        ("write", report, Path("out/gpu_check")),
    ]  # fmt: skip
    assert report.dry and report.context == ["ctx"] and report.log == []
    assert main.budgets == [main.budget] * 3 and all(b is main.budget for b in main.budgets)
    assert (
        capsys.readouterr().err
        == "".join(
            f"gpu_check: CPU (dry run of the {name} config) (123 s left)\n"
            for name in ("CUDA", "TensorRT FP16", "CPU")
        )
        + "gpu_check: wrote t.md and t.json\n"
    )


def test_main_with_every_flag(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The flags reach the plan, the context, the checks (in PROVIDERS' order) and the writer."""
    main = Main(monkeypatch)
    tool = tmp_path / "perf_analyzer"
    tool.write_text("")
    tool.chmod(0o755)
    (tmp_path / "summary").write_text("collected\n3 passed \n\n")
    argv = [str(tmp_path / "t.md"), "--budget-s", "50.5", "--instances", "2", "--client-processes", "3",
            "--server-workers", "2", "--providers", " cpu, cuda", "--cache-dir", "c", "--work-dir", "w",
            "--tests-summary", str(tmp_path / "summary"), "--perf-analyzer", str(tool),
            "--without-perf-analyzer", "x", "--note", "a", "--note", "b", "--server-arg=--x=y",
            "--pa-model", "resnet_u8"]  # fmt: skip
    assert gc.main(argv) == 0
    plan = dataclasses.replace(plan_for(False, 2, 3, 2), server_args=("--x=y",), pa_models=("resnet_u8",))
    assert main.calls[:3] == [("budget", 50.5), ("context", plan, "3 passed"), ("pa context", tool, plan)]
    assert main.calls[4] == ("demo", Path("c"))  # after the SIGTERM handler (calls[3])
    assert main.calls[5:7] == [
        ("check", Path("/demo"), Path("w"), key, plan, tool) for key in ("cuda", "cpu")
    ]
    assert main.calls[7] == ("write", main.report, tmp_path / "t.md")
    assert main.report.context == ["ctx", "pa ctx", "a", "b"] and not main.report.dry


def test_main_context_without_perf_analyzer_and_targets(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Why perf_analyzer did not run; $OUT as the target; GPU_CHECK_DRY=1 as --dry; an empty summary."""
    main = Main(monkeypatch, providers=())
    (tmp_path / "summary").write_text("\n")
    monkeypatch.setenv("OUT", str(tmp_path))
    monkeypatch.setenv("GPU_CHECK_DRY", "1")
    argv = [
        "--providers",
        "cpu",
        "--without-perf-analyzer",
        "no tool",
        "--tests-summary",
        str(tmp_path / "summary"),
    ]
    assert gc.main(argv) == 0
    assert main.calls[1] == ("context", plan_for(True), None)
    assert main.report.context == ["ctx", "perf_analyzer: not run (no tool)"]
    assert main.calls[-1] == ("write", main.report, tmp_path)
    monkeypatch.setenv("OUT", "")
    gc.main(["--providers", "cpu", "--tests-summary", str(tmp_path / "none")])
    assert main.calls[-1][2] == Path("out/gpu_check") and main.calls[-5] == ("context", plan_for(True), None)


def test_main_without_cuda_says_so(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A GPU run where onnxruntime has no CUDA provider: exit 1 before anything is built."""
    main = Main(monkeypatch, providers=())
    monkeypatch.setenv("GPU_CHECK_DRY", "0")
    assert gc.main([]) == 1
    assert capsys.readouterr().err == (
        "gpu_check: onnxruntime lists no CUDAExecutionProvider (install .[gpu]; --dry for CPU)\n"
    )
    assert main.calls == []


@pytest.mark.parametrize(
    "flags",
    [["--providers", "cuda,gpu"], ["--instances", "0"], ["--client-processes", "0"],
     ["--server-workers", "0"], ["--budget-s", "0"]],
)  # fmt: skip
def test_main_refuses_bad_counts(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], flags: list[str]
) -> None:
    """Unknown providers and counts not positive: a usage error naming them all."""
    Main(monkeypatch)
    with pytest.raises(SystemExit) as stop:
        gc.main(flags)
    assert stop.value.code == 2
    said = capsys.readouterr().err.splitlines()[-1]
    assert said.endswith(
        "error: --providers must name cuda, tensorrt or cpu; --instances, --client-processes, "
        "--server-workers and --budget-s must be positive"
    )


@pytest.mark.parametrize("mode", [0o644, "folder"])
def test_main_refuses_a_perf_analyzer_not_executable(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path, mode: int | str
) -> None:
    """--perf-analyzer must be an executable file: not a plain file, not a folder."""
    Main(monkeypatch)
    tool = tmp_path / "pa"
    if mode == "folder":
        tool.mkdir()
    else:
        tool.write_text("")
        tool.chmod(int(mode))
    with pytest.raises(SystemExit):
        gc.main(["--perf-analyzer", str(tool)])
    assert (
        capsys.readouterr()
        .err.splitlines()[-1]
        .endswith(f"error: --perf-analyzer {tool}: no executable file there")
    )


def test_main_logs_a_failed_check_and_stops_at_sigterm(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A check that raises is logged and the next runs; SIGTERM ends the loop; the table is written."""
    main = Main(monkeypatch)
    main.raises = {"cuda": ValueError("bad value\nmore"), "tensorrt": gc.Stopped()}
    assert gc.main([]) == 1
    assert [call[3] for call in main.calls if call[0] == "check"] == ["cuda", "tensorrt"]
    assert main.calls[1] == ("context", plan_for(False, 1, 4, 1), None)  # a GPU run's default counts
    assert main.report.log == [
        "[CUDA] check stopped: ValueError: bad value",
        "[TensorRT FP16] stopped by SIGTERM (the time limit): the rest not run",
    ]
    assert main.calls[-1][0] == "write"
    assert (
        capsys.readouterr().err.splitlines()[-1].startswith("gpu_check: not every point was measured: [CUDA]")
    )


def test_main_help_names_every_flag(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """--help: the docstring's first line, each flag's help text whole (a line's end) and the metavars."""
    monkeypatch.setenv("COLUMNS", "400")
    with pytest.raises(SystemExit):
        gc.main(["--help"])
    text = capsys.readouterr().out
    assert f"\n{gc.__doc__.splitlines()[0]}\n" in text
    assert "--budget-s BUDGET_S" in text and "--without-perf-analyzer WHY" in text
    assert "--pa-model {resnet,resnet_u8}" in text
    for said in (
        "a .md file or a folder (default: $OUT)", "bound of the whole measurement",
        "KIND_GPU instances on GPU 0",
        "the load generator's processes (served points)", "`serve --workers` (server processes)",
        "some of cuda,tensorrt,cpu", "demo models' cache",
        "repository copies, engine cache (default: .cache/gpu_check, not $OUT)",
        "a file whose last line is pytest's summary",
        "perf_analyzer: also measure the resnets through it, wire and shm",
        "why perf_analyzer is not run (the report)",
        "a line for the report's context",
        "a further `serve` flag (repeatable; '--x=y' form)",
        "perf_analyzer's models (repeatable; default both resnets)",
    ):  # fmt: skip
        assert f" {said}\n" in text, said
