"""Spans and failure lines of ensembles, and of runs that fail or that the caller's deadline cuts.

A server built in the test's event loop over the ensemble repository (tests/support/ensemble_repo.py),
its spans in memory. An ensemble's request gets a `step` span per step (model, version, outcome)
and its failure line names the request and its trace; a queued request's `queue` span ends where
its run began whatever the run's outcome, its `compute` span following it.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from protos import grpc_service_pb2 as pb
from protos import grpc_service_pb2_grpc as pb_grpc
from server.app import SluicewayServer
from server.observability.logs import log_handler
from server.settings import ServerSettings
from tests.support.ensemble_repo import ensemble_repository

BOUND_S = 60.0  # an upper bound on any answer here
Stub = Any  # generated, unannotated


class SignallingExporter(InMemorySpanExporter):
    """Spans in memory, with an event set at each export (spans are exported on the event loop's
    thread as they end: SimpleSpanProcessor)."""

    def __init__(self) -> None:
        super().__init__()
        self.exported = asyncio.Event()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        result = super().export(spans)
        self.exported.set()
        return result

    async def wait_for(self, name: str) -> list[ReadableSpan]:
        """The finished spans once one named `name` is among them."""
        while not named(self.get_finished_spans(), name):
            self.exported.clear()
            await asyncio.wait_for(self.exported.wait(), BOUND_S)
        return list(self.get_finished_spans())


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return ensemble_repository(tmp_path_factory.mktemp("ens-traced"), tmp_path_factory.mktemp("ens-files"))


@contextlib.asynccontextmanager
async def serving(repo: Path, tmp_path: Path, exporter: InMemorySpanExporter) -> AsyncIterator[Stub]:
    settings = ServerSettings(
        host="127.0.0.1",
        port=0,
        model_repository=repo,
        cache_dir=tmp_path,
        metrics=False,  # its endpoint (a fixed port by default) is not under test here
        tracing=True,
        allow_fault_injection=True,
    )
    server = SluicewayServer(settings, span_exporter=exporter)
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            yield pb_grpc.GRPCInferenceServiceStub(channel)  # type: ignore[no-untyped-call]
    finally:
        await server.stop(grace_s=1.0)


@contextlib.contextmanager
def json_log() -> Iterator[io.StringIO]:
    """Everything logged at ERROR, as the JSON format writes it."""
    out = io.StringIO()
    handler = log_handler("json")
    handler.setStream(out)  # type: ignore[attr-defined]
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.ERROR)
    try:
        yield out
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)


def infer_request(model: str, request_id: str, dims: int = 4) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=model, id=request_id)  # no version: the server picks
    request.inputs.add(name="IN" if model in ("linear", "failing") else "x", datatype="FP32", shape=[1, dims])
    request.raw_input_contents.append(np.ones((1, dims), np.float32).tobytes())
    return request


def named(spans: Sequence[ReadableSpan], name: str) -> list[ReadableSpan]:
    return [s for s in spans if s.name == name]


def times(span: ReadableSpan) -> tuple[int, int]:
    assert span.start_time is not None and span.end_time is not None
    return span.start_time, span.end_time


def children(spans: Sequence[ReadableSpan], parent: ReadableSpan) -> list[ReadableSpan]:
    return [s for s in spans if s.parent is not None and s.parent.span_id == parent.context.span_id]


def stages(spans: Sequence[ReadableSpan], parent: ReadableSpan) -> dict[str, ReadableSpan]:
    got = {s.name: s for s in children(spans, parent) if s.name != "step"}
    assert len(got) == len([s for s in children(spans, parent) if s.name != "step"])  # one of each
    return got


async def test_each_step_of_an_ensemble_gets_a_span_under_its_request(repo: Path, tmp_path: Path) -> None:
    exporter = SignallingExporter()
    async with serving(repo, tmp_path, exporter) as stub:
        await stub.ModelInfer(infer_request("linear", "ens-ok"), timeout=BOUND_S)
        spans = await exporter.wait_for("ModelInfer")
    [request] = named(spans, "ModelInfer")
    steps = sorted((s for s in children(spans, request) if s.name == "step"), key=lambda s: times(s)[0])
    assert [dict(s.attributes or {})["sluiceway.model"] for s in steps] == ["add_one", "double"]
    for index, step in enumerate(steps, start=1):
        attributes = dict(step.attributes or {})
        assert attributes["sluiceway.ensemble"] == "linear" and attributes["sluiceway.step"] == index
        assert attributes["sluiceway.model_version"] == "1" and attributes["rpc.grpc.status_code"] == 0
        assert step.status.status_code != StatusCode.ERROR
        assert times(request)[0] <= times(step)[0] <= times(step)[1] <= times(request)[1]
    assert times(steps[0])[1] <= times(steps[1])[0]  # the second step reads the first's output
    # No queue of its own (its steps wait in their models' queues): its compute is the steps'.
    got = stages(spans, request)
    assert got.keys() == {"decode", "compute", "encode"}
    assert dict(got["compute"].attributes or {})["sluiceway.path"] == "ensemble"


async def failing_ensemble(repo: Path, tmp_path: Path, request_id: str) -> tuple[list[ReadableSpan], str]:
    """The spans and the JSON log of one request to `failing`, whose second step raises."""
    exporter = SignallingExporter()
    with json_log() as out:
        async with serving(repo, tmp_path, exporter) as stub:
            with pytest.raises(grpc.aio.AioRpcError) as failed:
                await stub.ModelInfer(infer_request("failing", request_id), timeout=BOUND_S)
            spans = await exporter.wait_for("ModelInfer")
    assert failed.value.code() == grpc.StatusCode.INTERNAL
    return spans, out.getvalue()


async def test_a_failing_step_gets_an_error_span(repo: Path, tmp_path: Path) -> None:
    spans, _ = await failing_ensemble(repo, tmp_path, "ens-bad")
    [request] = named(spans, "ModelInfer")
    steps = {
        dict(s.attributes or {})["sluiceway.model"]: s for s in children(spans, request) if s.name == "step"
    }
    assert steps.keys() == {"add_one", "faulty"}
    assert steps["add_one"].status.status_code != StatusCode.ERROR
    faulty = steps["faulty"]
    assert faulty.status.status_code == StatusCode.ERROR
    assert (faulty.status.description or "").startswith("INTERNAL: in ensemble 'failing', step 2")
    assert dict(faulty.attributes or {})["rpc.grpc.status_code"] == grpc.StatusCode.INTERNAL.value[0]


async def test_a_failing_steps_log_line_names_the_request_and_its_trace(repo: Path, tmp_path: Path) -> None:
    spans, log = await failing_ensemble(repo, tmp_path, "ens-bad")
    [request] = named(spans, "ModelInfer")
    lines = [json.loads(line) for line in log.splitlines()]
    [line] = [entry for entry in lines if entry.get("logger") == "server.models.ensemble"]
    # The fields a plain model's failure line carries (the version that served a request naming
    # none too), and the ids of the request's span.
    assert (line["model"], line["version"], line["request_id"]) == ("failing", "1", "ens-bad")
    assert line["trace_id"] == format(request.context.trace_id, "032x")
    assert line["span_id"] == format(request.context.span_id, "016x")
    assert "InjectedFault" in line["exception"]
    assert "request_id ens-bad" in line["message"]  # a text line carries no fields: its message does


async def test_a_failed_run_shows_queue_then_compute(repo: Path, tmp_path: Path) -> None:
    exporter = SignallingExporter()
    async with serving(repo, tmp_path, exporter) as stub:
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await stub.ModelInfer(infer_request("faulty", "run-bad"), timeout=BOUND_S)
        spans = await exporter.wait_for("ModelInfer")
    assert failed.value.code() == grpc.StatusCode.INTERNAL
    [request] = named(spans, "ModelInfer")
    got = stages(spans, request)
    assert {"decode", "queue", "compute"} <= got.keys()
    queue, compute = times(got["queue"]), times(got["compute"])
    assert queue[1] <= compute[0] <= compute[1] <= times(request)[1]  # siblings, the run not in the queue
    assert dict(got["compute"].attributes or {})["sluiceway.path"] == "batch"


async def test_a_run_cut_by_the_callers_deadline_shows_queue_then_compute(repo: Path, tmp_path: Path) -> None:
    """`slow` holds every run 0.5 s: the gRPC deadline (0.3 s) passes during the run."""
    exporter = SignallingExporter()
    async with serving(repo, tmp_path, exporter) as stub:
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await stub.ModelInfer(infer_request("slow", "run-late", dims=1), timeout=0.3)
        spans = await exporter.wait_for("ModelInfer")
    assert failed.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    [request] = named(spans, "ModelInfer")
    assert (
        dict(request.attributes or {})["rpc.grpc.status_code"] == grpc.StatusCode.DEADLINE_EXCEEDED.value[0]
    )
    got = stages(spans, request)
    assert {"decode", "queue", "compute"} <= got.keys()
    queue, compute = times(got["queue"]), times(got["compute"])
    assert queue[1] <= compute[0] <= compute[1] <= times(request)[1]


async def test_a_plain_models_failure_lines_name_their_own_traces(repo: Path, tmp_path: Path) -> None:
    """A unary call and two stream frames to `faulty` (every run raises): each failure line carries
    the ids of its own request's span (one failed batch shares its exception among its requests,
    so the ids come from the request's task, not the exception)."""
    exporter = SignallingExporter()
    with json_log() as out:
        async with serving(repo, tmp_path, exporter) as stub:
            with pytest.raises(grpc.aio.AioRpcError):
                await stub.ModelInfer(infer_request("faulty", "unary-bad"), timeout=BOUND_S)
            frames = [infer_request("faulty", f"frame-bad-{i}") for i in range(2)]
            answers = [a async for a in stub.ModelStreamInfer(iter(frames), timeout=BOUND_S)]
            assert all(a.error_message.startswith("INTERNAL") for a in answers) and len(answers) == 2
            while (
                len(named(exporter.get_finished_spans(), "ModelInfer"))
                + len(named(exporter.get_finished_spans(), "ModelStreamInfer"))
                < 3
            ):
                await exporter.wait_for("ModelStreamInfer")
            spans = list(exporter.get_finished_spans())
    by_id = {
        dict(s.attributes or {})["sluiceway.request_id"]: s
        for s in spans
        if s.name in ("ModelInfer", "ModelStreamInfer")
    }
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    failed = {line["request_id"]: line for line in lines if "request_id" in line}
    assert failed.keys() == {"unary-bad", "frame-bad-0", "frame-bad-1"}
    for request_id, line in failed.items():
        span = by_id[request_id]
        assert line["trace_id"] == format(span.context.trace_id, "032x"), request_id
        assert line["span_id"] == format(span.context.span_id, "016x"), request_id
