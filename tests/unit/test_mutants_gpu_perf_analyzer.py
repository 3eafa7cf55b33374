"""Mutation-driven tests for loadtest/gpu_perf_analyzer.py: the points planned and their order, the
budget checks, each point's perf_analyzer call and the rows made of its output (perf_analyzer, the
ModelStatistics reads and /metrics replaced by fakes)."""

from __future__ import annotations

import dataclasses
import subprocess
from pathlib import Path
from typing import Any

import grpc
import pytest

from loadtest import gpu_perf_analyzer as gpa
from loadtest.gpu_plan import Budget, Plan, plan_for
from loadtest.gpu_report import OUT_OF_TIME, PA_CUDA, PA_SHM, PA_WIRE, Row
from loadtest.perf_analyzer_table import STOPPED

TOOL = Path("pa")
ADDRESS = "127.0.0.1:5001"
FOUND = {"Inferences/Second": "250.5", "p50 latency": "4000", "p99 latency": "9000"}


class FixedBudget(Budget):
    """A budget whose seconds left never change."""

    def __init__(self, left: float) -> None:
        super().__init__(left)
        self.seconds = left

    def left(self) -> float:
        return self.seconds


def one_model(plan: Plan, workers: int = 1) -> Plan:
    return dataclasses.replace(plan, pa_models=("resnet",), server_workers=workers)


class Fakes:
    """Stand-ins for ModelStatistics, /metrics and perf_analyzer, recording what they were asked."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.stats: list[tuple[int, int]] = [(100, 7), (160, 10)] * 4
        self.padded: list[float | None] = [4.0, 9.0] * 4
        self.found: list[dict[str, str] | BaseException] = [dict(FOUND) for _ in range(4)]
        self.calls: list[tuple[Any, ...]] = []
        self.metrics: list[tuple[Any, ...]] = []
        self.stats_calls: list[tuple[str, str]] = []
        monkeypatch.setattr(gpa, "executions", self.executions)
        monkeypatch.setattr(gpa, "padded_shape_changes", self.padded_shape_changes)
        monkeypatch.setattr(gpa, "run_point", self.run_point)

    def executions(self, address: str, model: str) -> tuple[int, int]:
        self.stats_calls.append((address, model))
        return self.stats.pop(0)

    def padded_shape_changes(self, url: str | None, model: str) -> float | None:
        self.metrics.append((url, model))
        return self.padded.pop(0)

    def run_point(self, *args: Any) -> dict[str, str]:
        self.calls.append(args)
        found = self.found.pop(0)
        if isinstance(found, BaseException):
            raise found
        return found


def rows_of(plan: Plan, left: float = 1000.0) -> list[Row]:
    return gpa.perf_analyzer_rows(TOOL, ADDRESS, "GPU", plan, FixedBudget(left), "http://m")


def test_levels_are_those_above_one_in_flight() -> None:
    """Two in flight is a perf_analyzer level; one is not."""
    assert gpa.levels(plan_for(dry=True)) == (2,)
    assert gpa.levels(plan_for(dry=False)) == (16, 64)


def test_window_is_half_the_served_time_at_least_200_ms() -> None:
    """Half the served seconds in ms, never under 200."""
    assert gpa.window_ms(plan_for(dry=True)) == 300
    assert gpa.window_ms(plan_for(dry=False)) == 1500
    assert gpa.window_ms(dataclasses.replace(plan_for(dry=True), served_s=0.1)) == 200
    assert gpa.window_ms(dataclasses.replace(plan_for(dry=True), served_s=0.402)) == 201


def test_point_time_is_its_windows_and_the_start() -> None:
    """Three windows plus perf_analyzer's start."""
    assert gpa.point_s(plan_for(dry=True)) == pytest.approx(15.9)
    assert gpa.point_s(plan_for(dry=False)) == pytest.approx(19.5)


def test_points_on_a_gpu_with_one_worker_in_order() -> None:
    """Shared memory before the wire per model, CUDA in resnet's place with one worker."""
    assert gpa.points(plan_for(dry=False)) == [
        ("resnet", PA_SHM, 16), ("resnet", PA_SHM, 64), ("resnet", PA_CUDA, 16), ("resnet", PA_CUDA, 64),
        ("resnet", PA_WIRE, 16), ("resnet", PA_WIRE, 64), ("resnet_u8", PA_SHM, 16),
        ("resnet_u8", PA_SHM, 64), ("resnet_u8", PA_WIRE, 16), ("resnet_u8", PA_WIRE, 64),
    ]  # fmt: skip


def test_points_under_two_workers_put_cuda_last() -> None:
    """Two server workers already count as several: CUDA shared memory runs last."""
    kinds = [kind for _, kind, _ in gpa.points(plan_for(dry=False, server_workers=2))]
    assert kinds[-2:] == [PA_CUDA, PA_CUDA] and PA_CUDA not in kinds[:-2]


def test_skipped_rows_name_every_point_with_the_note() -> None:
    """One skipped row per model, transport and level, each with the note."""
    rows = gpa.skipped_rows("GPU", plan_for(dry=False), "why")
    assert rows == [
        Row(m, "GPU", kind, n, note="why")
        for m, kinds in (("resnet", (PA_WIRE, PA_SHM, PA_CUDA)), ("resnet_u8", (PA_WIRE, PA_SHM)))
        for kind in kinds
        for n in (16, 64)
    ]


def test_context_line_for_one_worker_on_a_gpu() -> None:
    """The whole context line with one server process."""
    assert gpa.perf_analyzer_context(TOOL, plan_for(dry=False)) == (
        "perf_analyzer: pa; resnet, resnet_u8 at 16, 64 in flight on the GPU providers' servers, "
        "3 windows of 1500 ms, over the wire and with --shared-memory system (cuda for resnet) "
        "(--allow-client-shm); avg batch from ModelStatistics"
    )


def test_context_line_for_two_workers_and_a_dry_run() -> None:
    """Two workers say so and give no batch; a dry run names no CUDA."""
    assert gpa.perf_analyzer_context(TOOL, plan_for(dry=False, server_workers=2)).endswith(
        "over the wire and with --shared-memory system (cuda for resnet), 2 server workers "
        "(--allow-client-shm); no avg batch"
    )
    assert gpa.perf_analyzer_context(TOOL, plan_for(dry=True)).endswith(
        "3 windows of 300 ms, over the wire and with --shared-memory system (--allow-client-shm); "
        "avg batch from ModelStatistics"
    )


def test_executions_reads_the_models_statistics(monkeypatch: pytest.MonkeyPatch) -> None:
    """ModelStatistics for the address and model within STATS_S, as (rows, runs)."""
    asked: list[tuple[Any, ...]] = []

    def batches_run(*args: Any) -> str:
        asked.append(args)
        return "ran"

    monkeypatch.setattr(gpa, "batches_run", batches_run)
    monkeypatch.setattr(gpa, "rows_and_runs", lambda ran: (len(ran), 1))
    assert gpa.executions(ADDRESS, "resnet") == (3, 1)
    assert asked == [(ADDRESS, "resnet", gpa.STATS_S)]


def run_point_call(
    monkeypatch: pytest.MonkeyPatch, kind: str, plan: Plan, address: str = ADDRESS
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    seen: list[tuple[tuple[Any, ...], dict[str, Any]]] = []

    def run_perf_analyzer(*args: Any, **kwargs: Any) -> dict[str, str]:
        seen.append((args, kwargs))
        return {"x": "1"}

    monkeypatch.setattr(gpa, "run_perf_analyzer", run_perf_analyzer)
    assert gpa.run_point(TOOL, address, "resnet", 16, kind, plan, 42.0) == {"x": "1"}
    (call,) = seen
    return call


@pytest.mark.parametrize(("kind", "region"), [(PA_SHM, "system"), (PA_CUDA, "cuda")])
def test_run_point_command_for_shared_memory(monkeypatch: pytest.MonkeyPatch, kind: str, region: str) -> None:
    """Port, level, windows, stability and the shared-memory flags with the output region's size."""
    args, kwargs = run_point_call(monkeypatch, kind, plan_for(dry=True))
    assert args == (TOOL, 5001, "resnet", 16, False, 300, 3, 999)
    extra = ["--shared-memory", region, "--output-shared-memory-size", "65536"]
    assert kwargs == {"extra": extra, "limit_s": 42.0, "env": {}}


def test_run_point_over_the_wire_with_workers(monkeypatch: pytest.MonkeyPatch) -> None:
    """No extra flags over the wire; the port after the last colon; one connection each under workers."""
    args, kwargs = run_point_call(monkeypatch, PA_WIRE, plan_for(dry=False, server_workers=2), "[::1]:5002")
    assert args == (TOOL, 5002, "resnet", 16, False, 1500, 3, 999)
    assert kwargs == {"extra": [], "limit_s": 42.0, "env": {gpa.SHARE_COUNT: "1"}}


def test_rows_from_perf_analyzer_output(monkeypatch: pytest.MonkeyPatch) -> None:
    """Rate, batch from the statistics' difference, latencies in ms and the padded changes."""
    fakes = Fakes(monkeypatch)
    rows = rows_of(one_model(plan_for(dry=True)))
    note = "5 padded shape changes"
    assert rows == [
        Row("resnet", "GPU", PA_SHM, 2, 250.5, 20.0, 4.0, 9.0, note),
        Row("resnet", "GPU", PA_WIRE, 2, 250.5, 20.0, 4.0, 9.0, note),
    ]
    plan = one_model(plan_for(dry=True))
    limit = gpa.point_s(plan) + 30.0
    assert fakes.calls == [
        (TOOL, ADDRESS, "resnet", 2, PA_SHM, plan, limit),
        (TOOL, ADDRESS, "resnet", 2, PA_WIRE, plan, limit),
    ]
    assert fakes.stats_calls == [(ADDRESS, "resnet")] * 4
    assert fakes.metrics == [("http://m", "resnet")] * 4


def test_limit_is_the_budget_less_a_statistics_read(monkeypatch: pytest.MonkeyPatch) -> None:
    """With little time left the point's limit is what is left less STATS_S."""
    fakes = Fakes(monkeypatch)
    rows_of(one_model(plan_for(dry=True)), left=50.0)
    assert [call[-1] for call in fakes.calls] == [40.0, 40.0]


def test_a_point_needs_its_time_and_slack(monkeypatch: pytest.MonkeyPatch) -> None:
    """Exactly enough runs the point; less skips every point as out of time."""
    plan = one_model(plan_for(dry=True))
    need = gpa.point_s(plan) + gpa.POINT_SLACK_S
    fakes = Fakes(monkeypatch)
    assert [row.rows_s for row in rows_of(plan, left=need)] == [250.5, 250.5]
    assert len(fakes.calls) == 2
    assert rows_of(plan, left=need - 1.0) == [
        Row("resnet", "GPU", PA_SHM, 2, note=OUT_OF_TIME),
        Row("resnet", "GPU", PA_WIRE, 2, note=OUT_OF_TIME),
    ]
    assert rows_of(plan, left=20.0)[0].note == OUT_OF_TIME
    assert len(fakes.calls) == 2


def test_a_failed_point_notes_its_first_line_and_the_next_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    """The error's first line, cut at 200 characters, and the next point still measured."""
    fakes = Fakes(monkeypatch)
    fakes.found[0] = RuntimeError("  " + "e" * 250 + "\nsecond line")
    rows = rows_of(one_model(plan_for(dry=True)))
    assert rows[0] == Row("resnet", "GPU", PA_SHM, 2, note="perf_analyzer failed: " + "e" * 200)
    assert rows[1].rows_s == 250.5 and rows[1].measure == PA_WIRE


@pytest.mark.parametrize(
    ("err", "said"),
    [
        (RuntimeError(), "RuntimeError"),
        (OSError("no such tool"), "no such tool"),
        (subprocess.TimeoutExpired(["pa"], 1.0), "Command '['pa']' timed out after 1.0 seconds"),
        (grpc.RpcError(), "RpcError"),
    ],
)
def test_a_failure_without_words_is_named_by_its_type(
    monkeypatch: pytest.MonkeyPatch, err: BaseException, said: str
) -> None:
    """An empty message gives the exception's type name."""
    fakes = Fakes(monkeypatch)
    fakes.found[0] = err
    row = rows_of(one_model(plan_for(dry=True)))[0]
    assert row == Row("resnet", "GPU", PA_SHM, 2, note=f"perf_analyzer failed: {said}")


def test_no_padding_counter_and_no_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    """No /metrics after: no padded note; no runs between the reads: no batch."""
    fakes = Fakes(monkeypatch)
    fakes.stats = [(5, 3), (5, 3)] * 2
    fakes.padded = [4.0, None, None, 2.0]
    rows = rows_of(one_model(plan_for(dry=True)))
    assert [(row.avg_batch, row.note) for row in rows] == [(None, ""), (None, "2 padded shape changes")]


def test_padded_changes_from_zero(monkeypatch: pytest.MonkeyPatch) -> None:
    """A zero count before is zero, not one."""
    fakes = Fakes(monkeypatch)
    fakes.padded = [0.0, 3.0, 0.0, 3.0]
    assert [row.note for row in rows_of(one_model(plan_for(dry=True)))] == ["3 padded shape changes"] * 2


def test_several_workers_give_no_batch_nor_padded_note(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two statistics reads may reach two workers: no avg batch and no padded changes."""
    Fakes(monkeypatch)
    rows = rows_of(one_model(plan_for(dry=True), workers=2))
    assert [(row.avg_batch, row.note, row.rows_s) for row in rows] == [(None, "", 250.5)] * 2


def test_a_stopped_point_keeps_its_row_with_both_notes(monkeypatch: pytest.MonkeyPatch) -> None:
    """A report written before the stop: the padded note and the stop, joined by '; '."""
    fakes = Fakes(monkeypatch)
    fakes.found[0] = {**FOUND, STOPPED: "stopped late"}
    rows = rows_of(one_model(plan_for(dry=True)))
    assert rows[0].note == "5 padded shape changes; stopped late"
    assert rows[1].note == "5 padded shape changes"


def test_context_line_lists_several_cuda_models(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CUDA models are listed comma-separated."""
    monkeypatch.setattr(gpa, "CUDA_MODELS", ("resnet", "resnet_u8"))
    assert "(cuda for resnet, resnet_u8)" in gpa.perf_analyzer_context(TOOL, plan_for(dry=False))
