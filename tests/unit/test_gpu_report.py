"""The GPU check's summary (loadtest/gpu_report.py): the ratios the issue's targets are read from,
and skipped points that stay visible instead of vanishing."""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import text_format

from loadtest import gpu_check
from loadtest.gpu_check import PROVIDERS, Budget, check_provider, plan_for, tensorrt_missing
from loadtest.gpu_report import (
    PA_CUDA,
    PA_SHM,
    PA_WIRE,
    RAW,
    SERVED,
    Report,
    Row,
    markdown,
    summary_rows,
    transport_rows,
    write,
)
from loadtest.gpu_repository import profile_shapes, tensorrt_parameters
from protos import model_config_pb2 as mc


def rows() -> list[Row]:
    raw = [Row("resnet", "CUDA", RAW, b, rate) for b, rate in ((1, 500.0), (8, 2000.0), (64, 4000.0))]
    served = [
        Row("resnet", "CUDA", SERVED, 1, 400.0, 1.0, 2.0, 3.0),
        Row("resnet", "CUDA", SERVED, 16, 2400.0, 9.5, 6.0, 9.0),
        Row("resnet", "CUDA", SERVED, 64, 3400.0, 30.0, 18.0, 25.0),
    ]
    return [*raw, *served]


def test_perf_analyzer_rows_say_the_transport_share_and_leave_the_summary_alone() -> None:
    """Shared memory against the wire and against raw's best batch, per level; the summary's
    served figures stay the harness's (perf_analyzer's rows are another measurement)."""
    pa = [
        Row("resnet", "CUDA", PA_WIRE, 64, 800.0, 30.0, 70.0, 90.0),
        Row("resnet", "CUDA", PA_SHM, 64, 3200.0, 48.0, 20.0, 30.0),
        Row("resnet", "CUDA", PA_CUDA, 64, 3600.0, 56.0, 16.0, 22.0),
        Row("resnet", "CUDA", PA_SHM, 16, None, note="perf_analyzer failed: exit 99"),
    ]
    (top, failed) = transport_rows([*rows(), *pa])
    assert (top["in_flight"], top["wire_rows_s"], top["shm_rows_s"]) == (64, 800.0, 3200.0)
    assert (top["shm_over_wire"], top["shm_over_raw_best"]) == (4.0, 3200.0 / 4000.0)
    assert (top["cuda_rows_s"], top["cuda_over_raw_best"]) == (3600.0, 3600.0 / 4000.0)
    assert (failed["in_flight"], failed["wire_rows_s"], failed["shm_over_raw_best"]) == (16, None, None)
    assert summary_rows([*rows(), *pa]) == summary_rows(rows())
    text = markdown(Report(False, [], [*rows(), *pa]))
    assert "| resnet | CUDA | 64 | 800.0 | 3,200.0 | 4.00 | 0.80 | 3,600.0 | 0.90 |" in text
    assert "| resnet | CUDA | 16 | - | - | - | - | - | - |" in text
    assert "## Transport" not in markdown(Report(False, [], rows()))
    wire_shm = [r for r in pa if r.measure != PA_CUDA]
    assert "CUDA shm" not in markdown(Report(False, [], [*rows(), *wire_shm]))  # no CUDA tried: no columns
    broken = Row("resnet", "CUDA", PA_WIRE, 16, note="perf_analyzer failed: a | b\nc")
    assert "| perf_analyzer failed: a \\| b c |" in markdown(Report(False, [], [broken]))


def test_the_summary_compares_served_at_most_in_flight_with_the_best_raw_batch() -> None:
    (s,) = summary_rows(rows())
    assert (s["raw_best_rows_s"], s["raw_best_batch"]) == (4000.0, 64)
    assert (s["served_rows_s"], s["served_most_in_flight"]) == (3400.0, 64)
    assert s["served_over_raw_best"] == 3400.0 / 4000.0
    assert s["batching_gain"] == 3400.0 / 400.0
    assert (s["p99_ms"], s["p99_level"]) == (9.0, 16)


def test_skipped_points_are_written_with_their_reason(tmp_path: Path) -> None:
    skipped = [Row("mlp", "TensorRT FP16", SERVED, n, note="skipped: time budget spent") for n in (1, 16, 64)]
    report = Report(dry=False, context=["GPU: test"], rows=[*rows(), *skipped])
    text = markdown(report)
    assert text.startswith("# GPU check\n") and "DRY RUN" not in text
    # Each skipped row says why, and the summary line carries the reason once.
    assert text.count("skipped: time budget spent") == 3 + 1
    assert "| mlp | TensorRT FP16 | - (-) | - (64) | - | - | - (16) | skipped: time budget spent |" in text
    md, js = write(report, tmp_path)
    assert md == tmp_path / "gpu_check.md" and js.read_text().count("skipped") == 3 + 1


def test_tensorrt_gets_one_profile_from_one_row_to_the_largest_batch(tmp_path: Path) -> None:
    config = text_format.Parse(
        'name: "resnet_u8" max_batch_size: 64 '
        'input { name: "frame" data_type: TYPE_UINT8 dims: [224, 224, 3] }',
        mc.ModelConfig(),
    )
    assert profile_shapes(config, 1) == "frame:1x224x224x3"
    params = tensorrt_parameters(config, 64, tmp_path)
    assert params["precision_mode"] == "FP16" and params["trt_engine_cache_path"] == str(tmp_path)
    assert params["trt_profile_max_shapes"] == params["trt_profile_opt_shapes"] == "frame:64x224x224x3"


def test_tensorrt_is_missing_when_its_library_does_not_load() -> None:
    def absent(name: str) -> object:
        raise OSError(f"{name}: cannot open shared object file: No such file or directory")

    assert tensorrt_missing(lambda name: object()) is None
    why = tensorrt_missing(absent)
    assert why is not None and why.startswith("TensorRT's libnvinfer.so.10 does not load (")


def test_without_tensorrt_its_series_is_skipped_not_measured_as_cuda_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(
        gpu_check, "tensorrt_missing", lambda: "TensorRT's libnvinfer.so.10 does not load (x)"
    )
    plan = plan_for(dry=False)
    report = Report(dry=False, context=[])
    trt = next(p for p in PROVIDERS if p.key == "tensorrt")
    # A demo folder that does not exist: nothing may be read, copied or started.
    check_provider(tmp_path / "no-demo", tmp_path / "work", trt, plan, Budget(300.0), report)
    assert not (tmp_path / "work").exists()
    per_model = len(plan.raw_batches) + len(plan.in_flight)
    assert len(report.rows) == len(gpu_check.MODELS) * per_model
    assert {r.note for r in report.rows} == {"skipped: TensorRT's libnvinfer.so.10 does not load (x)"}
    assert all(r.rows_s is None and r.provider == "TensorRT FP16" for r in report.rows)
    assert report.log == ["[TensorRT FP16] not measured: TensorRT's libnvinfer.so.10 does not load (x)"]


def test_a_gpu_provider_that_did_not_start_is_in_the_title_and_the_json(tmp_path: Path) -> None:
    """A tester's stand-in nvidia-smi: CUDA did not start, the rows ran on the CPU, and the table
    was titled "GPU check" with a served/raw above the issue's target."""
    note = "ran on CPUExecutionProvider (CUDAExecutionProvider: did not start)"
    fell = [Row("resnet", "CUDA", RAW, 8, 90.0, 8.0, 80.0, 90.0, note), *rows()[3:]]
    cpu_series = [Row("resnet", "CPU", RAW, 8, 90.0, 8.0, 80.0, 90.0, "")]
    md, js = write(Report(dry=False, context=[], rows=[*fell, *cpu_series]), tmp_path)
    text = md.read_text()
    assert text.startswith("# GPU check: CUDA DID NOT START (those rows are not GPU figures)")
    assert "**CUDA: the provider did not start; its rows ran on the CPU provider" in text
    assert '"not_gpu": [\n  "CUDA"\n ]' in js.read_text()
    healthy = markdown(Report(dry=False, context=[], rows=rows()))
    assert healthy.startswith("# GPU check\n") and "DID NOT START" not in healthy


def test_served_points_say_how_often_the_padded_shape_changed(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each change of a CUDA instance's padded size is a cuDNN plan build per convolution: the
    served rows read the server's count per point (resnet_u8 at 64 in flight had served 367 rows/s,
    p50 237 ms, and nothing said why). The harness is stood in for: its results, as it reports them."""
    import loadtest.cli

    asked: list[list[str]] = []

    def fake_run(args: Any) -> dict[str, Any]:
        asked.append(args)
        entry = {
            "target": "resnet", "step": {"level": 64}, "errors": {}, "throughput_rps": 800.0,
            "latency_us": {"p50": 20_000.0, "p99": 30_000.0},
            "server": {"avg_batch_size": 30.0, "metrics": {"padded_shape_changes": 12.0}},
        }  # fmt: skip
        plain = {**entry, "target": "mlp", "server": {"avg_batch_size": 9.0, "metrics": None}}
        return {"results": [entry, plain]}

    monkeypatch.setattr(loadtest.cli, "run", fake_run)
    plan = plan_for(False)
    url = "http://127.0.0.1:9/metrics"
    rows = gpu_check.served_rows("127.0.0.1:1", PROVIDERS[0], plan, Budget(300.0), [], url)
    assert asked[0].server_metrics == url
    notes = {r.model: r.note for r in rows}
    assert notes == {"resnet": "12 padded shape changes", "mlp": ""}
    assert [r.avg_batch for r in rows] == [30.0, 9.0]
    # Several server workers: a read before and one after a point may reach two of them, so the
    # difference is no batch (on the H200 one such row read 1.00 at 16 in flight, another none).
    workers = dataclasses.replace(plan, server_workers=8)
    rows = gpu_check.served_rows("127.0.0.1:1", PROVIDERS[0], workers, Budget(300.0), [], url)
    assert [(r.rows_s, r.avg_batch, r.note) for r in rows] == [(800.0, None, ""), (800.0, None, "")]


def test_the_verdict_fails_a_run_that_measured_less_than_it_was_for(tmp_path: Path) -> None:
    """A tester's run whose server never started (perf_analyzer's shared memory with several server
    workers) wrote every served row as "server did not start" and exited 0."""
    served = Row("resnet", "CUDA", SERVED, 16, 800.0, 10.0, 20.0, 30.0)
    assert gpu_check.verdict(Report(False, [], [served])) == 0
    missing = Row("resnet", "CUDA", SERVED, 16, note=gpu_check.NOT_SERVED)
    assert gpu_check.verdict(Report(False, [], [missing])) == 1
    stopped = Report(False, [], [served], ["[CUDA] stopped by SIGTERM (the time limit): the rest not run"])
    assert gpu_check.verdict(stopped) == 1


def test_perf_analyzer_rows_of_a_provider_that_did_not_start_say_so() -> None:
    """After a CUDA fallback the title said so, but the Transport table and perf_analyzer's rows read
    as plain CUDA figures."""
    fell = [Row("resnet", "CUDA", RAW, 8, 40.0, 8.0, 1.0, 2.0, "ran on CPUExecutionProvider (CUDA: x)")]
    pa = [Row("resnet", "CUDA", PA_WIRE, 16, 30.0, 4.0, 9.0, 12.0), Row("resnet", "CUDA", PA_SHM, 16, 31.0)]
    (row,) = transport_rows([*fell, *pa])
    assert row["provider"] == "CUDA (the provider did not start: CPU figures)"
    assert transport_rows([*fell, *pa], dry=True)[0]["provider"] == "CUDA"  # a dry run says it once, above
    text = markdown(Report(False, [], [*fell, *pa]))
    wire = next(line for line in text.splitlines() if "| served, perf_analyzer |" in line)
    assert wire.endswith("| the provider did not start: CPU figures |")


def test_perf_analyzer_takes_system_shared_memory_to_several_server_workers() -> None:
    """A system region registered through one worker is every worker's (shm_book.py), and so is a
    CUDA region (cuda_shm_workers.py): perf_analyzer measures the wire and system shared memory, and
    on a GPU resnet through CUDA shared memory too, under several workers after every other point."""
    from loadtest.gpu_perf_analyzer import perf_analyzer_context, points, transports

    gpu, dry = plan_for(dry=False), plan_for(dry=True)
    assert transports(gpu, "resnet") == (PA_WIRE, PA_SHM, PA_CUDA)
    assert transports(gpu, "resnet_u8") == (PA_WIRE, PA_SHM)
    assert transports(dry, "resnet") == (PA_WIRE, PA_SHM)
    workers = plan_for(dry=False, server_workers=8)
    assert transports(workers, "resnet") == (PA_WIRE, PA_SHM, PA_CUDA)
    assert transports(workers, "resnet_u8") == (PA_WIRE, PA_SHM)
    kinds = [(model, kind) for model, kind, _ in points(workers)]
    assert kinds == [
        *[("resnet", PA_SHM)] * 2, *[("resnet", PA_WIRE)] * 2,
        *[("resnet_u8", PA_SHM)] * 2, *[("resnet_u8", PA_WIRE)] * 2,
        *[("resnet", PA_CUDA)] * 2,
    ]  # fmt: skip
    one = [(model, kind) for model, kind, _ in points(gpu)]
    assert one[:6] == [*[("resnet", PA_SHM)] * 2, *[("resnet", PA_CUDA)] * 2, *[("resnet", PA_WIRE)] * 2]
    assert [level for _, _, level in points(gpu)][:2] == [16, 64]
    said = perf_analyzer_context(Path("pa"), workers)
    assert (
        "--shared-memory system (cuda for resnet), 8 server workers (--allow-client-shm); no avg batch"
        in said
    )
    assert "--allow-client-shm" in perf_analyzer_context(Path("pa"), gpu)
    assert "cuda" not in perf_analyzer_context(Path("pa"), dry)


def test_a_perf_analyzer_point_past_its_time_is_stopped_with_what_it_started(tmp_path: Path) -> None:
    """The wheel's console script runs the binary as a child and, stopped, left it running; a point
    past its time now stops the tool's whole process group."""
    import subprocess

    from loadtest.gpu_perf_analyzer import run_point

    tool = tmp_path / "perf_analyzer"
    marker = f"sleep 97.{os.getpid()}"  # this run's own (pgrep sees another test run's processes too)
    tool.write_text(f"#!/bin/sh\necho '  Pass [1] throughput: 10 infer/sec'\n{marker} &\nwait\n")
    tool.chmod(0o755)
    with pytest.raises(RuntimeError, match=r"ran past 1 s and was stopped \(its last line: Pass \[1\]"):
        run_point(tool, "127.0.0.1:1", "resnet", 16, PA_WIRE, plan_for(True), 1.0)
    left = subprocess.run(["pgrep", "-xf", re.escape(marker)], capture_output=True, text=True, check=False)
    assert left.stdout == "", left.stdout


@pytest.mark.parametrize(("kind", "region"), [(PA_WIRE, None), (PA_SHM, "system"), (PA_CUDA, "cuda")])
def test_each_transport_is_asked_of_perf_analyzer_by_its_flag(
    tmp_path: Path, kind: str, region: str | None
) -> None:
    from loadtest.gpu_perf_analyzer import run_point

    tool, said = tmp_path / "perf_analyzer", tmp_path / "args"
    # A stand-in that keeps its arguments and writes the report perf_analyzer would (-f PATH).
    tool.write_text(
        f'#!/bin/sh\nprintf "%s\\n" "$@" > {said}\n'
        'while [ "$1" != -f ]; do shift; done\n'
        'printf "Inferences/Second,p50 latency,p99 latency\\n10,1000,2000\\n" > "$2"\n'
    )
    tool.chmod(0o755)
    row = run_point(tool, "127.0.0.1:1", "resnet", 16, kind, plan_for(True), 10.0)
    assert row == {"Inferences/Second": "10", "p50 latency": "1000", "p99 latency": "2000"}
    args = said.read_text().split()
    if region is None:
        assert "--shared-memory" not in args
    else:
        assert args[args.index("--shared-memory") + 1] == region


def test_against_several_workers_each_request_in_flight_has_a_connection_of_its_own() -> None:
    """The served points' users and perf_analyzer's requests: one connection each against `serve
    --workers N` (the kernel spreads connections over the workers, not requests); one a client
    process against one server process, as before."""
    from loadtest.gpu_perf_analyzer import SHARE_COUNT, spread_env
    from loadtest.gpu_plan import plan_for

    several, one = plan_for(False, processes=8, server_workers=8), plan_for(False, processes=8)
    assert several.connections == 8 and one.connections == 1  # 64 in flight over 8 processes
    assert spread_env(several) == {SHARE_COUNT: "1"} and spread_env(one) == {}
