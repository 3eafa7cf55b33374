"""Logs of a server built in the test's event loop: quiet at INFO under load, JSON lines that name
the failed request (model, version, request id) and never its tensors."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from protos import grpc_service_pb2 as pb
from protos import grpc_service_pb2_grpc as pb_grpc
from server.app import SluicewayServer
from server.observability.logs import log_handler
from server.settings import ServerSettings
from tests.support.repositories import write_model
from tests.support.server_process import ServerProcess

BOUND_S = 60.0
MARKER = 1234.5  # an input value: its bytes or text must never reach the log
MODELS = {
    "mlp": "max_batch_size: 8\ndynamic_batching { }\n",
    "raises": """
max_batch_size: 8
dynamic_batching { }
parameters { key: "fault_raise_every" value: { string_value: "1" } }
""",
}
Stub = Any  # generated, unannotated


@pytest.fixture(scope="module")
def repo(demo_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("logged")
    for name, config in MODELS.items():
        write_model(root, name, demo_repo / "mlp" / "1" / "model.onnx", config)
    return root


@contextlib.asynccontextmanager
async def serving(repo: Path, tmp_path: Path) -> AsyncIterator[Stub]:
    settings = ServerSettings(
        host="127.0.0.1",
        port=0,
        model_repository=repo,
        cache_dir=tmp_path,
        metrics=False,  # its endpoint (a fixed port by default) is not under test here
        allow_fault_injection=True,
    )
    server = SluicewayServer(settings)
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            yield pb_grpc.GRPCInferenceServiceStub(channel)  # type: ignore[no-untyped-call]
    finally:
        await server.stop(grace_s=1.0)


@contextlib.contextmanager
def json_log(level: int) -> Iterator[io.StringIO]:
    """Everything logged at `level` and above, as the JSON format writes it."""
    out = io.StringIO()
    handler = log_handler("json")
    handler.setStream(out)  # type: ignore[attr-defined]
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(level)
    try:
        yield out
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)


def infer_request(model: str, request_id: str, rows: int = 1) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=model, model_version="1", id=request_id)
    request.inputs.add(name="features", datatype="FP32", shape=[rows, 64])
    request.raw_input_contents.append(np.full((rows, 64), MARKER, np.float32).tobytes())
    return request


async def test_a_server_under_load_logs_nothing_per_request_at_info(repo: Path, tmp_path: Path) -> None:
    async with serving(repo, tmp_path) as stub:
        with json_log(logging.INFO) as out:

            async def client(i: int) -> None:
                for j in range(25):
                    await stub.ModelInfer(infer_request("mlp", f"c{i}-{j}"), timeout=BOUND_S)
                for bad in (infer_request("nosuch", "x"), infer_request("mlp", "rows", rows=99)):
                    with pytest.raises(grpc.aio.AioRpcError):
                        await stub.ModelInfer(bad, timeout=BOUND_S)

            await asyncio.gather(*(client(i) for i in range(16)))
            requests = [infer_request("mlp", f"s{i}") for i in range(50)] + [infer_request("nosuch", "sx")]
            answers = [a async for a in stub.ModelStreamInfer(iter(requests), timeout=BOUND_S)]
            assert sum(1 for a in answers if a.error_message) == 1
            assert out.getvalue() == ""  # 400 answered, 33 refused, 51 streamed: not one line


async def test_json_lines_name_the_failed_request_never_its_tensors(repo: Path, tmp_path: Path) -> None:
    async with serving(repo, tmp_path) as stub:
        with json_log(logging.INFO) as out:
            with pytest.raises(grpc.aio.AioRpcError) as failed:
                await stub.ModelInfer(infer_request("raises", "req-json-1"), timeout=BOUND_S)
            assert failed.value.code() == grpc.StatusCode.INTERNAL
            routed = infer_request("raises", "req-json-3")
            routed.model_version = ""  # the server picks: the line still names the version it ran
            with pytest.raises(grpc.aio.AioRpcError):
                await stub.ModelInfer(routed, timeout=BOUND_S)
            call = stub.ModelStreamInfer(iter([infer_request("raises", "req-json-2")]), timeout=BOUND_S)
            [answer] = [a async for a in call]
            assert answer.error_message.startswith("INTERNAL")
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    failures = {entry["request_id"]: entry for entry in lines if entry.get("request_id")}
    unary, streamed = failures["req-json-1"], failures["req-json-2"]
    # A text line carries no fields: the message names the request itself.
    assert unary["message"] == "request failed (model raises, version 1, request_id req-json-1)"
    assert streamed["message"].startswith("stream request failed (model raises")
    assert failures["req-json-3"]["version"] == "1"  # it had no version in a line about a routed request
    assert (unary["level"], unary["model"], unary["version"], unary["request_id"]) == (
        "ERROR",
        "raises",
        "1",
        "req-json-1",
    )
    assert streamed["request_id"] == "req-json-2" and streamed["logger"] == "server.protocol.stream"
    assert "InjectedFault" in unary["exception"]
    text = out.getvalue()
    assert str(MARKER) not in text and repr(np.float32(MARKER).tobytes())[2:-1] not in text


def test_sluiceway_serve_writes_json_lines_with_log_format_json() -> None:
    with ServerProcess("--log-format", "json", "--tracing", "--tracing-exporter", "none") as server:
        pass  # started (its ready line is printed after the log line below), then stopped
    assert server.process is not None and server.process.returncode == 0
    entries = [json.loads(line) for line in server.lines if line.startswith("{")]
    messages = {(entry["logger"], entry["message"].split(" (")[0]) for entry in entries}
    assert ("server.app", f"sluiceway serving on 127.0.0.1:{server.port}") in messages
    assert ("server.observability.tracing", "tracing on: exporter none, sample ratio 1") in messages
    assert all(entry["level"] in ("INFO", "WARNING", "ERROR") for entry in entries)
