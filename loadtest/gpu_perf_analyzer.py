"""The GPU check's outside measurement: NVIDIA's perf_analyzer against the same server, over the wire
and with system shared memory, for the models with large inputs (resnet's 602 KB, resnet_u8's
150 KB a row).

Why: on an H200 the served resnet at 64 in flight was 0.12 of raw onnxruntime's best batch (session
35). Each request's tensor crosses gRPC into one Python process; with `--shared-memory system` only
a region name does, so the two rows side by side say how much of the gap is the transport and how
much the serving path (batching, the device runs). On a GPU, resnet also runs with `--shared-memory
cuda` (a region in device memory, registered by CUDA IPC handle), the transport a Triton user would
pick for the highest rate; a perf_analyzer built without CUDA says so in that row. perf_analyzer is
also the load generator the issue names, an outside check on sluiceway-loadtest's served rows.

Each point is a perf_analyzer run of three time windows (stability not required: the figures are
what the windows measured), time-boxed; the average batch is ModelStatistics' rows over executions
during the run.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import grpc

from loadtest.gpu_plan import Budget, Plan
from loadtest.gpu_report import OUT_OF_TIME, PA_CUDA, PA_SHM, PA_WIRE, Row
from loadtest.model_statistics import batches_run, rows_and_runs
from loadtest.perf_analyzer_table import STOPPED, run_perf_analyzer
from loadtest.server_metrics import padded_shape_changes

CUDA_MODELS = ("resnet",)  # the 0.8-of-raw target's model, through CUDA shared memory on a GPU
WINDOWS = 3
OUTPUT_SHM_BYTES = 64 * 1024  # the resnets' logits: 1000 FP32 a row
START_S = 15.0  # perf_analyzer's own start, its metadata calls and shared-memory registration
STATS_S = 10.0  # a ModelStatistics read, before and after each point
POINT_SLACK_S = 2 * STATS_S + 5.0  # left in the budget, beyond the point's own time, for it to start


def levels(plan: Plan) -> tuple[int, ...]:
    """The levels above one in flight: where transport and batching decide the rate."""
    return tuple(n for n in plan.in_flight if n > 1)


def window_ms(plan: Plan) -> int:
    return max(200, round(plan.served_s * 1000 / 2))


def point_s(plan: Plan) -> float:
    return WINDOWS * window_ms(plan) / 1000 + START_S


# tritonclient's C++ gRPC client (perf_analyzer's): how many of its clients share one channel.
SHARE_COUNT = "TRITON_CLIENT_GRPC_CHANNEL_MAX_SHARE_COUNT"


def transports(plan: Plan, model: str) -> tuple[str, ...]:
    """The ways `model`'s tensors reach the server: over the wire and through system shared memory
    (every worker's regions under several, shm_book.py), and CUDA shared memory for resnet on a GPU
    (under several workers each opens perf_analyzer's handles in a CUDA context of its own,
    cuda_shm_workers.py: those points run last, in what time is left, see `points`)."""
    cuda = (PA_CUDA,) if model in CUDA_MODELS and not plan.dry else ()
    return (PA_WIRE, PA_SHM, *cuda)


def points(plan: Plan) -> list[tuple[str, str, int]]:
    """(model, transport, level) in the order they run. Shared memory before the wire for each
    model: over the wire perf_analyzer keeps every request's inputs and, on a loaded machine, can
    fall behind copying them (loadtest/stall_view.py); a point lost so must not cost the
    shared-memory points their time. Under several workers CUDA shared memory comes after every
    other point: new there (forty-first session), it must not cost the known rows their time."""
    every = [
        (model, kind, level)
        for model in plan.pa_models  # (the MLP's 256 bytes need no shared memory)
        for kind in sorted(transports(plan, model), key=lambda kind: kind == PA_WIRE)
        for level in levels(plan)
    ]
    return sorted(every, key=lambda point: point[1] == PA_CUDA and plan.server_workers > 1)  # (stable)


def skipped_rows(label: str, plan: Plan, note: str) -> list[Row]:
    return [
        Row(m, label, kind, n, note=note)
        for m in plan.pa_models
        for kind in transports(plan, m)
        for n in levels(plan)
    ]


def perf_analyzer_context(tool: Path, plan: Plan) -> str:
    """The report's line on how the perf_analyzer rows were taken."""
    head = (
        f"perf_analyzer: {tool}; {', '.join(plan.pa_models)} at {', '.join(map(str, levels(plan)))} in "
        f"flight on the GPU providers' servers, {WINDOWS} windows of {window_ms(plan)} ms, "
    )
    cuda = f" (cuda for {', '.join(CUDA_MODELS)})" if not plan.dry else ""
    if plan.server_workers > 1:  # two statistics reads may reach two workers: no batch from them
        return head + (
            f"over the wire and with --shared-memory system{cuda}, {plan.server_workers} server workers "
            "(--allow-client-shm); no avg batch"
        )
    return head + (
        f"over the wire and with --shared-memory system{cuda} (--allow-client-shm); "
        "avg batch from ModelStatistics"
    )


def executions(address: str, model: str) -> tuple[int, int]:
    """(rows, executions) the server has run for `model` (ModelStatistics)."""
    return rows_and_runs(batches_run(address, model, STATS_S))


def run_point(
    tool: Path, address: str, model: str, level: int, kind: str, plan: Plan, limit_s: float
) -> dict[str, str]:
    """perf_analyzer's CSV row for one level (Inferences/Second, p50/p99 latency in us) over the
    transport `kind`, in at most `limit_s` (perf_analyzer_table.run_perf_analyzer)."""
    extra: list[str] = []
    if kind != PA_WIRE:
        region = "cuda" if kind == PA_CUDA else "system"
        extra = ["--shared-memory", region, "--output-shared-memory-size", str(OUTPUT_SHM_BYTES)]
    port = int(address.rsplit(":", 1)[1])  # a spawned server's: 127.0.0.1
    return run_perf_analyzer(
        tool, port, model, level, False, window_ms(plan), WINDOWS, 999, extra=extra, limit_s=limit_s,
        env=spread_env(plan),
    )  # fmt: skip


def spread_env(plan: Plan) -> dict[str, str]:
    """Against several server processes, perf_analyzer's requests in flight each on a connection of
    its own: its gRPC client shares one connection among 6 by default (3 connections at 16 in flight,
    11 at 64), and the kernel spreads connections, not requests, over the workers, so at 16 in
    flight at most 3 of 8 workers had work (loadtest/connection_spread.py)."""
    return {SHARE_COUNT: "1"} if plan.server_workers > 1 else {}


def perf_analyzer_rows(
    tool: Path, address: str, label: str, plan: Plan, budget: Budget, metrics_url: str | None = None
) -> list[Row]:
    """Both resnets at each level above one, through system shared memory and over the wire (and
    resnet through CUDA shared memory on a GPU), in `points`' order while the budget lasts; the
    padded shape changes during each point in its note, where the server pads (one process)."""
    rows: list[Row] = []
    for model, kind, level in points(plan):
        if budget.left() < point_s(plan) + POINT_SLACK_S:
            rows.append(Row(model, label, kind, level, note=OUT_OF_TIME))
            continue
        try:
            before, changed = executions(address, model), padded_shape_changes(metrics_url, model)
            limit = min(point_s(plan) + 30.0, budget.left() - STATS_S)
            found = run_point(tool, address, model, level, kind, plan, limit)
            after, now = executions(address, model), padded_shape_changes(metrics_url, model)
        except (RuntimeError, OSError, subprocess.TimeoutExpired, grpc.RpcError) as err:
            note = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
            rows.append(Row(model, label, kind, level, note=f"perf_analyzer failed: {note}"))
            continue
        ran, runs = after[0] - before[0], after[1] - before[1]
        one_process = plan.server_workers == 1  # else before and after may be two workers' reads
        changes = now - (changed or 0) if now is not None and one_process else None
        padded = "" if changes is None else f"{changes:.0f} padded shape changes"
        note = "; ".join(filter(None, (padded, found.get(STOPPED, ""))))
        rows.append(
            Row(
                model, label, kind, level, float(found["Inferences/Second"]),
                ran / runs if runs and one_process else None,
                float(found["p50 latency"]) / 1e3, float(found["p99 latency"]) / 1e3,
                note,
            )
        )  # fmt: skip
    return rows
