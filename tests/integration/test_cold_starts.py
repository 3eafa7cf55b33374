"""Lazy models against a real server: listed but not loaded, loaded once by concurrent first
requests, and evicted least-recently-used within --model-memory-budget-mb."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import numpy as np

from clients import NO_RETRY, AsyncClient, Client
from protos import grpc_service_pb2 as pb
from protos import grpc_service_pb2_grpc as pb_grpc
from tests.integration.client_fixtures import features
from tests.integration.test_repository_control import index
from tests.support.repositories import write_model
from tests.support.server_process import ServerProcess

LAZY = 'parameters { key: "lazy_load" value { string_value: "true" } }\n'
FIRST_LOAD = "first request, loading it (lazy_load)"


def test_a_lazy_model_loads_once_for_concurrent_first_requests(demo_repo: Path, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    mlp = demo_repo / "mlp"
    config = (mlp / "config.pbtxt").read_text()
    write_model(repo, "mlp", mlp / "1" / "model.onnx", config)
    write_model(repo, "lazy", mlp / "1" / "model.onnx", config.replace('"mlp"', '"lazy"') + LAZY)
    write_model(repo, "streamed", mlp / "1" / "model.onnx", config.replace('"mlp"', '"streamed"') + LAZY)
    write_model(repo, "described", mlp / "1" / "model.onnx", config.replace('"mlp"', '"described"') + LAZY)
    with ServerProcess("--model-repository", str(repo)) as server:
        (_, state, reason) = index(server.address)["lazy"][0]
        assert state == "UNAVAILABLE" and "not loaded (lazy)" in reason
        with Client(server.address, retry=NO_RETRY) as client:
            assert client.server_ready()  # a lazy model not loaded yet does not make it unready

        async def first_requests() -> list[dict[str, np.ndarray]]:
            async with AsyncClient(server.address, retry=NO_RETRY) as client:
                calls = [
                    client.infer("lazy", {"features": features(1, seed=i)}, timeout_s=60) for i in range(8)
                ]
                return await asyncio.gather(*calls)

        answers = asyncio.run(first_requests())
        assert all(a["scores"].shape == (1, 2) for a in answers)
        server.wait_for_output(FIRST_LOAD)  # the output pump can lag behind the answers
        assert server.output().count(FIRST_LOAD) == 1
        assert index(server.address)["lazy"][0][1] == "READY"

        async def first_frames() -> list[dict[str, np.ndarray]]:  # a stream's first frames wait too
            async with (
                AsyncClient(server.address, retry=NO_RETRY) as client,
                client.stream("streamed") as stream,
            ):
                for i in range(4):
                    await stream.send({"features": features(1, seed=i)})
                return [await stream.recv() for _ in range(4)]

        assert all(a["scores"].shape == (1, 2) for a in asyncio.run(first_frames()))
        server.wait_for_output(FIRST_LOAD, times=2)  # the output pump can lag behind the answers
        assert server.output().count(FIRST_LOAD) == 2  # lazy, then streamed: once each

        # perf_analyzer asks for metadata and config before its first inference: they load it.
        channel = grpc.insecure_channel(server.address)
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        assert not stub.ModelReady(pb.ModelReadyRequest(name="described"), timeout=10).ready
        assert index(server.address)["described"][0][1] == "UNAVAILABLE"  # neither loads it
        metadata = stub.ModelMetadata(pb.ModelMetadataRequest(name="described"), timeout=60)
        assert [t.name for t in metadata.inputs] == ["features"]
        config = stub.ModelConfig(pb.ModelConfigRequest(name="described"), timeout=60).config
        assert config.name == "described"
        assert stub.ModelReady(pb.ModelReadyRequest(name="described"), timeout=10).ready
        channel.close()


def test_the_least_recently_used_lazy_model_is_evicted_within_the_budget(
    demo_repo: Path, tmp_path: Path
) -> None:
    # Two resnets (45 MB of weights each; each holds 45-47 MiB with onnxruntime 1.31, 67-70 with
    # 1.23) and an 80 MiB budget: one fits, two never do (a footprint is at least its files' size;
    # a reload is judged by its measured footprint, so the budget must hold one as measured).
    repo = tmp_path / "repo"
    resnet = demo_repo / "resnet"
    config = (resnet / "config.pbtxt").read_text()
    for name in ("first", "second"):
        write_model(repo, name, resnet / "1" / "model.onnx", config.replace('"resnet"', f'"{name}"') + LAZY)
    image = np.zeros((1, 3, 224, 224), dtype=np.float32)
    with (
        ServerProcess("--model-repository", str(repo), "--model-memory-budget-mb", "80") as server,
        Client(server.address, retry=NO_RETRY) as client,
    ):
        assert client.infer("first", {"image": image}, timeout_s=120)["logits"].shape == (1, 1000)
        assert client.infer("second", {"image": image}, timeout_s=120)["logits"].shape == (1, 1000)
        shown = index(server.address)
        assert shown["second"][0][1] == "READY"
        assert shown["first"][0][1] == "UNAVAILABLE" and "evicted" in shown["first"][0][2]
        server.wait_for_output("model first evicted")
        # Its next request loads it again (evicting `second`, now the least recently used).
        assert client.infer("first", {"image": image}, timeout_s=120)["logits"].shape == (1, 1000)
        assert "evicted" in index(server.address)["second"][0][2]


SLOW_LAZY = (
    """
backend: "identity"
max_batch_size: 8
input { name: "INPUT0" data_type: TYPE_FP32 dims: [4] }
output { name: "OUTPUT0" data_type: TYPE_FP32 dims: [4] }
parameters { key: "creation_delay_sec" value { string_value: "3" } }
"""
    + LAZY
)


def test_a_first_requests_timeout_parameter_bounds_its_wait_for_the_load(tmp_path: Path) -> None:
    """A 0.5 s `timeout` with a 30 s gRPC deadline: answered OK after the 3 s load, the timeout
    counted only from after it. Now DEADLINE_EXCEEDED naming the load; the load goes on."""
    (tmp_path / "slow" / "1").mkdir(parents=True)
    (tmp_path / "slow" / "config.pbtxt").write_text(SLOW_LAZY)
    with (
        ServerProcess("--model-repository", str(tmp_path)) as server,
        grpc.insecure_channel(server.address) as channel,
    ):
        request = pb.ModelInferRequest(model_name="slow")
        request.inputs.add(name="INPUT0", datatype="FP32", shape=[1, 4])
        request.raw_input_contents.append(np.zeros((1, 4), np.float32).tobytes())
        request.parameters["timeout"].int64_param = 500_000  # microseconds, as Triton's
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        try:
            stub.ModelInfer(request, timeout=30)
            raise AssertionError("answered OK after the load, past its 0.5 s timeout")
        except grpc.RpcError as err:
            assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED, err.details()
            assert "is loading (lazy_load) and was not ready within the request's deadline" in (
                err.details() or ""
            )
