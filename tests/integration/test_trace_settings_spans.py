"""Triton's trace settings change which requests get spans: a server built in the test's event
loop with an in-memory span exporter, its settings changed through the TraceSetting RPC."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from protos import grpc_service_pb2 as pb
from tests.integration.test_tracing import BOUND_S, Stub, infer_request, named, serving, traceparent
from tests.support.repositories import write_model


@pytest.fixture(scope="module")
def repo(demo_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("trace-settings")
    for name in ("mlp", "mlp2"):
        write_model(root, name, demo_repo / "mlp" / "1" / "model.onnx", "max_batch_size: 8\n")
    return root


async def change(stub: Stub, model: str = "", **values: list[str]) -> dict[str, list[str]]:
    request = pb.TraceSettingRequest(model_name=model)
    for name, value in values.items():
        request.settings[name].value.extend(value)
    response = await stub.TraceSetting(request, timeout=BOUND_S)
    return {name: list(value.value) for name, value in response.settings.items()}


def traced_ids(exporter: InMemorySpanExporter, rpc: str = "ModelInfer") -> list[str]:
    spans = named(exporter.get_finished_spans(), rpc)
    return sorted(str(dict(s.attributes or {})["sluiceway.request_id"]) for s in spans)


async def infer(stub: Stub, model: str, *ids: str, metadata: tuple[tuple[str, str], ...] = ()) -> None:
    for request_id in ids:
        await stub.ModelInfer(infer_request(model, request_id), metadata=metadata, timeout=BOUND_S)


async def test_trace_rate_traces_one_request_in_n(repo: Path, tmp_path: Path) -> None:
    exporter = InMemorySpanExporter()
    async with serving(repo, tmp_path, exporter) as stub:
        await change(stub, trace_rate=["3"])
        await infer(stub, "mlp", *(f"r{i}" for i in range(1, 10)))
    assert traced_ids(exporter) == ["r3", "r6", "r9"]


async def test_each_request_of_a_stream_is_counted(repo: Path, tmp_path: Path) -> None:
    exporter = InMemorySpanExporter()
    async with serving(repo, tmp_path, exporter) as stub:
        await change(stub, trace_rate=["2"])
        call = stub.ModelStreamInfer(
            iter([infer_request("mlp", f"s{i}") for i in range(1, 5)]), timeout=BOUND_S
        )
        answers = [answer async for answer in call]
    assert [a.error_message for a in answers] == [""] * 4
    assert traced_ids(exporter, "ModelStreamInfer") == ["s2", "s4"]


async def test_trace_count_stops_after_n_traces(repo: Path, tmp_path: Path) -> None:
    exporter = InMemorySpanExporter()
    async with serving(repo, tmp_path, exporter) as stub:
        await change(stub, trace_count=["2"])
        await infer(stub, "mlp", "c1", "c2", "c3", "c4")
        left = (await change(stub))["trace_count"]
    assert traced_ids(exporter) == ["c1", "c2"] and left == ["0"]


async def test_level_off_stops_new_spans_and_clearing_it_starts_them(repo: Path, tmp_path: Path) -> None:
    exporter = InMemorySpanExporter()
    _, _, sampled = traceparent(sampled=True)
    async with serving(repo, tmp_path, exporter) as stub:
        await change(stub, trace_level=["OFF"])
        await infer(stub, "mlp", "off1")
        await infer(stub, "mlp", "off2", metadata=sampled)  # a caller's sampled context too
        await change(stub, trace_level=[])  # back to the value at start: TIMESTAMPS
        await infer(stub, "mlp", "on1")
    assert traced_ids(exporter) == ["on1"]


async def test_a_models_setting_applies_to_it_alone_until_cleared(repo: Path, tmp_path: Path) -> None:
    exporter = InMemorySpanExporter()
    async with serving(repo, tmp_path, exporter) as stub:
        shown = await change(stub, "mlp2", trace_level=["OFF"])
        await infer(stub, "mlp", "a1")
        await infer(stub, "mlp2", "b1")
        await change(stub, "mlp2", trace_level=[])
        await infer(stub, "mlp2", "b2")
    assert shown["trace_level"] == ["OFF"]
    assert traced_ids(exporter) == ["a1", "b2"]


async def test_an_unknown_model_is_not_found(repo: Path, tmp_path: Path) -> None:
    async with serving(repo, tmp_path, InMemorySpanExporter()) as stub:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await change(stub, "nope", trace_rate=["2"])
    assert refused.value.code() == grpc.StatusCode.NOT_FOUND
