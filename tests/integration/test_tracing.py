"""Tracing end to end: a server built in the test's event loop with an in-memory span exporter.

Requests carry a W3C `traceparent` in their call metadata; the spans the server makes must
continue it, hang decode/queue/compute/encode under the request span, and link a batch's run to
every traced request in it.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from protos import grpc_service_pb2 as pb
from protos import grpc_service_pb2_grpc as pb_grpc
from server.app import SluicewayServer
from server.settings import ServerSettings
from tests.support.repositories import write_model

BOUND_S = 60.0  # an upper bound on any answer here
MODELS = {
    "mlp": "max_batch_size: 8\ndynamic_batching { }\n",
    # One-row requests wait until 4 rows are queued: four of them make exactly one batch.
    "held4": """
max_batch_size: 8
dynamic_batching { preferred_batch_size: [ 4 ] max_queue_delay_microseconds: 60000000 }
parameters { key: "idle_dispatch" value: { string_value: "false" } }
""",
}
Stub = Any  # generated, unannotated


@pytest.fixture(scope="module")
def repo(demo_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("traced")
    for name, config in MODELS.items():
        write_model(root, name, demo_repo / "mlp" / "1" / "model.onnx", config)
    return root


@contextlib.asynccontextmanager
async def serving(
    repo: Path, tmp_path: Path, exporter: InMemorySpanExporter, **values: Any
) -> AsyncIterator[Stub]:
    settings = ServerSettings(
        host="127.0.0.1",
        port=0,
        model_repository=repo,
        cache_dir=tmp_path,
        metrics=False,  # its endpoint (a fixed port by default) is not under test here
        tracing=True,
        **values,
    )
    server = SluicewayServer(settings, span_exporter=exporter)
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            yield pb_grpc.GRPCInferenceServiceStub(channel)  # type: ignore[no-untyped-call]
    finally:
        await server.stop(grace_s=1.0)


def infer_request(model: str, request_id: str) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=model, id=request_id)
    request.inputs.add(name="features", datatype="FP32", shape=[1, 64])
    request.raw_input_contents.append(np.ones((1, 64), np.float32).tobytes())
    return request


def traceparent(sampled: bool = True) -> tuple[int, int, tuple[tuple[str, str], ...]]:
    trace_id, span_id = random.getrandbits(128) | 1, random.getrandbits(64) | 1
    header = f"00-{trace_id:032x}-{span_id:016x}-{'01' if sampled else '00'}"
    return trace_id, span_id, (("traceparent", header),)


def named(spans: Sequence[ReadableSpan], name: str) -> list[ReadableSpan]:
    return [s for s in spans if s.name == name]


def times(span: ReadableSpan) -> tuple[int, int]:
    assert span.start_time is not None and span.end_time is not None
    return span.start_time, span.end_time


def children(spans: Sequence[ReadableSpan], parent: ReadableSpan) -> dict[str, ReadableSpan]:
    got = {s.name: s for s in spans if s.parent is not None and s.parent.span_id == parent.context.span_id}
    assert all(s.context.trace_id == parent.context.trace_id for s in got.values())
    return got


async def test_a_request_span_continues_the_callers_traceparent(repo: Path, tmp_path: Path) -> None:
    exporter = InMemorySpanExporter()
    trace_id, span_id, metadata = traceparent()
    async with serving(repo, tmp_path, exporter) as stub:
        await stub.ModelInfer(infer_request("mlp", "req-1"), metadata=metadata, timeout=BOUND_S)
    spans = exporter.get_finished_spans()
    [request] = named(spans, "ModelInfer")
    assert request.context.trace_id == trace_id
    assert request.parent is not None and request.parent.span_id == span_id and request.parent.is_remote
    attributes = dict(request.attributes or {})
    assert attributes["sluiceway.model"] == "mlp" and attributes["sluiceway.model_version"] == "1"
    assert attributes["sluiceway.request_id"] == "req-1" and attributes["sluiceway.rows"] == 1
    assert attributes["rpc.grpc.status_code"] == 0 and request.status.status_code != StatusCode.ERROR
    stages = children(spans, request)
    # The first run of a model goes through the queue (the estimator has seen no run yet).
    assert {"decode", "queue", "compute", "encode"} <= stages.keys()
    start, end = times(request)
    for stage in stages.values():
        assert start <= times(stage)[0] <= times(stage)[1] <= end
    decode, queue, compute, encode = (times(stages[n]) for n in ("decode", "queue", "compute", "encode"))
    assert decode[1] <= queue[0] <= queue[1] <= compute[0] <= compute[1] <= encode[0]
    [batch] = named(spans, "batch")
    assert [link.context.span_id for link in stages["compute"].links] == [batch.context.span_id]
    assert batch.parent is not None and batch.parent.span_id == request.context.span_id


async def test_a_batched_run_links_every_request_in_it(repo: Path, tmp_path: Path) -> None:
    exporter = InMemorySpanExporter()
    callers = [traceparent() for _ in range(4)]
    async with serving(repo, tmp_path, exporter) as stub:
        await asyncio.gather(
            *(
                stub.ModelInfer(infer_request("held4", f"b{i}"), metadata=metadata, timeout=BOUND_S)
                for i, (_, _, metadata) in enumerate(callers)
            )
        )
    spans = exporter.get_finished_spans()
    [batch] = named(spans, "batch")
    attributes = dict(batch.attributes or {})
    assert attributes["sluiceway.batch.rows"] == 4 and attributes["sluiceway.batch.requests"] == 4
    requests = named(spans, "ModelInfer")
    assert sorted(r.context.trace_id for r in requests) == sorted(t for t, _, _ in callers)
    assert {link.context.span_id for link in batch.links} == {r.context.span_id for r in requests}
    for request in requests:
        assert request.parent is not None and (request.context.trace_id, request.parent.span_id) in {
            (t, s) for t, s, _ in callers
        }
        stages = children(spans, request)
        assert {"decode", "queue", "compute", "encode"} <= stages.keys()
        [link] = stages["compute"].links
        assert link.context.span_id == batch.context.span_id
        assert dict(link.attributes or {})["sluiceway.batch.rows"] == 4


async def test_each_request_of_a_stream_gets_a_span(repo: Path, tmp_path: Path) -> None:
    exporter = InMemorySpanExporter()
    trace_id, span_id, metadata = traceparent()
    async with serving(repo, tmp_path, exporter) as stub:
        call = stub.ModelStreamInfer(
            iter([infer_request("mlp", f"s{i}") for i in range(3)]), metadata=metadata, timeout=BOUND_S
        )
        answers = [answer async for answer in call]
    assert [a.error_message for a in answers] == ["", "", ""]
    spans = exporter.get_finished_spans()
    requests = named(spans, "ModelStreamInfer")
    assert sorted(str(dict(r.attributes or {})["sluiceway.request_id"]) for r in requests) == [
        "s0",
        "s1",
        "s2",
    ]
    for request in requests:
        assert request.context.trace_id == trace_id
        assert request.parent is not None and request.parent.span_id == span_id
        assert {"decode", "compute", "encode"} <= children(spans, request).keys()


async def test_a_request_answered_inline_gets_its_spans(repo: Path, tmp_path: Path) -> None:
    """Once the estimator has seen a cheap run, an idle model answers at once (the fast path)."""
    exporter = InMemorySpanExporter()
    # The largest inline limit: at the default 300 µs a loaded machine (a full parallel test run
    # beside other work) ran the mlp slower than that in all 20 tries, and no request went inline.
    async with serving(repo, tmp_path, exporter, inline_run_max_us=5000) as stub:
        for i in range(20):
            exporter.clear()
            await stub.ModelInfer(infer_request("mlp", f"f{i}"), timeout=BOUND_S)
            spans = exporter.get_finished_spans()
            [request] = named(spans, "ModelInfer")
            stages = children(spans, request)
            if dict(stages["compute"].attributes or {})["sluiceway.path"] == "inline":
                break
        else:
            pytest.fail("no request took the fast path in 20 sequential requests")
    assert request.parent is None  # no traceparent: a new trace
    assert stages.keys() == {"decode", "compute", "encode"}  # no queue, no batch
    assert not named(spans, "batch")


async def test_a_failed_request_has_an_error_span(repo: Path, tmp_path: Path) -> None:
    exporter = InMemorySpanExporter()
    trace_id, _, metadata = traceparent()
    async with serving(repo, tmp_path, exporter) as stub:
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await stub.ModelInfer(infer_request("nosuchmodel", "bad"), metadata=metadata, timeout=BOUND_S)
    [request] = named(exporter.get_finished_spans(), "ModelInfer")
    assert request.context.trace_id == trace_id
    assert request.status.status_code == StatusCode.ERROR
    code = failed.value.code()
    assert dict(request.attributes or {})["rpc.grpc.status_code"] == code.value[0]
    assert (request.status.description or "").startswith(code.name)


async def test_sampling_ratio_zero_records_nothing_new(repo: Path, tmp_path: Path) -> None:
    """Ratio 0: no new trace is recorded, nor one whose caller did not sample it; a caller's
    sampled trace is still continued (ParentBased: the caller decided)."""
    exporter = InMemorySpanExporter()
    _, _, unsampled = traceparent(sampled=False)
    trace_id, _, sampled = traceparent(sampled=True)
    async with serving(repo, tmp_path, exporter, tracing_sample_ratio=0.0) as stub:
        for i in range(3):
            await stub.ModelInfer(infer_request("mlp", f"n{i}"), timeout=BOUND_S)
            await stub.ModelInfer(infer_request("mlp", f"u{i}"), metadata=unsampled, timeout=BOUND_S)
        assert exporter.get_finished_spans() == ()
        await stub.ModelInfer(infer_request("mlp", "p"), metadata=sampled, timeout=BOUND_S)
    assert {s.context.trace_id for s in exporter.get_finished_spans()} == {trace_id}


async def test_tracing_is_off_by_default(repo: Path, tmp_path: Path) -> None:
    exporter = InMemorySpanExporter()
    settings = ServerSettings(
        host="127.0.0.1", port=0, model_repository=repo, cache_dir=tmp_path, metrics=False
    )
    server = SluicewayServer(settings, span_exporter=exporter)
    assert server.tracing is None
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)  # type: ignore[no-untyped-call]
            _, _, metadata = traceparent()
            await stub.ModelInfer(infer_request("mlp", "off"), metadata=metadata, timeout=BOUND_S)
    finally:
        await server.stop(grace_s=1.0)
    assert exporter.get_finished_spans() == ()


STRINGS = 70_000  # past ENCODE_OFF_LOOP_STRINGS: its answer is encoded in a thread, after answer_now
_CACHED_STRINGS = """
backend: "identity"
max_batch_size: 0
input [ { name: "x" data_type: TYPE_STRING dims: [ -1 ] } ]
output [ { name: "y" data_type: TYPE_STRING dims: [ -1 ] } ]
response_cache { enable: true }
"""


async def test_a_cache_hit_encoded_later_is_traced_as_a_cache_hit(tmp_path: Path) -> None:
    # It had been traced as queued (a `queue` span, no `compute`): it never was (a tester, session 49).
    repo = tmp_path / "repo"
    (repo / "words" / "1").mkdir(parents=True)  # the identity backend needs no file
    (repo / "words" / "config.pbtxt").write_text(_CACHED_STRINGS)
    request = pb.ModelInferRequest(model_name="words", id="w")
    request.inputs.add(name="x", datatype="BYTES", shape=[STRINGS])
    request.raw_input_contents.append(
        b"".join(len(b"ab").to_bytes(4, "little") + b"ab" for _ in range(STRINGS))
    )
    exporter = InMemorySpanExporter()
    async with serving(repo, tmp_path, exporter) as stub:
        await stub.ModelInfer(request, timeout=BOUND_S)  # a miss: computed and cached
        exporter.clear()
        answer = await stub.ModelInfer(request, timeout=BOUND_S)
    assert list(answer.outputs[0].shape) == [STRINGS]
    spans = exporter.get_finished_spans()
    [call] = named(spans, "ModelInfer")
    stages = children(spans, call)
    assert stages.keys() == {"decode", "compute", "encode"}
    assert dict(stages["compute"].attributes or {})["sluiceway.path"] == "cache"
    assert times(stages["compute"])[1] <= times(stages["encode"])[0]
