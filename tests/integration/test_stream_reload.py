"""A hot reload never fails a stream's requests: a request prepared on the version a reload
retires is submitted to the version serving now (issue 10's first defect)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest

from clients import AsyncClient
from protos import grpc_service_pb2 as pb
from protos import grpc_service_pb2_grpc as pb_grpc
from server.models.manager import ModelManager
from server.protocol.infer_job import InferJob
from server.protocol.request_path import RequestPath
from server.settings import ServerSettings
from tests.integration.client_fixtures import features
from tests.support.repositories import write_model
from tests.support.server_process import ServerProcess

RELOADS = 50


def _request(seed: int) -> pb.ModelInferRequest:
    data = features(2, seed=seed)
    request = pb.ModelInferRequest(model_name="mlp", id=str(seed))
    request.inputs.add(name="features", datatype="FP32", shape=list(data.shape))
    request.raw_input_contents.append(data.tobytes())
    return request


@pytest.fixture()
def mlp_repo(demo_repo: Path, tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    mlp = demo_repo / "mlp"
    write_model(repo, "mlp", mlp / "1" / "model.onnx", (mlp / "config.pbtxt").read_text())
    return repo


async def test_a_request_prepared_before_a_reload_runs_on_the_new_version(
    mlp_repo: Path, tmp_path: Path
) -> None:
    # The exact interleaving a stream can hit: prepared on version A (the stream reader), then
    # A is retired by a reload, then submitted (the request's own task).
    manager = ModelManager(mlp_repo, ServerSettings(cache_dir=tmp_path, metrics=False), lambda n, r: None)
    await manager.load_all()
    try:
        path = RequestPath(manager, lambda: False)
        before = manager.resolve("mlp")
        job = InferJob.prepare(before, _request(1), 30.0)
        await manager.load("mlp")
        after = manager.resolve("mlp")
        assert after is not before and not before.batcher.accepting
        response = await path.finish(job, 0)
        assert response.id == "1" and job.served is after
        assert after.stats.success.count == 1 and before.stats.success.count == 0
    finally:
        await manager.stop(drain_timeout_s=5)


async def test_a_request_for_a_stopping_server_still_fails_unavailable(
    mlp_repo: Path, tmp_path: Path
) -> None:
    manager = ModelManager(mlp_repo, ServerSettings(cache_dir=tmp_path, metrics=False), lambda n, r: None)
    await manager.load_all()
    stopping = False
    try:
        path = RequestPath(manager, lambda: stopping)
        job = InferJob.prepare(manager.resolve("mlp"), _request(2), 30.0)
        await manager.load("mlp")
        stopping = True
        with pytest.raises(Exception, match="not accepting requests"):
            await path.finish(job, 0)
    finally:
        await manager.stop(drain_timeout_s=5)


async def test_a_stream_loses_nothing_while_its_model_is_reloaded_fifty_times(mlp_repo: Path) -> None:
    with ServerProcess(
        "--model-repository",
        str(mlp_repo),
        "--metrics-port",
        "0",
        "--model-control-mode",
        "explicit",
        "--load-model",
        "*",
    ) as server:
        reloads_done = asyncio.Event()
        async with AsyncClient(server.address, default_timeout_s=60) as client:

            async def reload_repeatedly() -> None:
                async with grpc.aio.insecure_channel(server.address) as channel:
                    stub = pb_grpc.GRPCInferenceServiceStub(channel)
                    for _ in range(RELOADS):
                        await stub.RepositoryModelLoad(
                            pb.RepositoryModelLoadRequest(model_name="mlp"), timeout=60
                        )
                reloads_done.set()

            answered = failed = 0
            async with client.stream("mlp", max_in_flight=32) as stream:

                async def produce() -> None:
                    # Bounded: stops once the reloads are done, or after 200,000 frames.
                    for i in range(200_000):
                        if reloads_done.is_set():
                            break
                        await stream.send({"features": features(1 + i % 3, seed=i % 50)})
                    await stream.done_sending()

                reloader = asyncio.create_task(reload_repeatedly())
                producer = asyncio.create_task(produce())
                async for result in stream:
                    if result.error is None:
                        answered += 1
                    else:
                        failed += 1
                await producer
                await reloader
    assert failed == 0, f"{failed} of {answered + failed} stream requests failed during {RELOADS} reloads"
    assert answered > RELOADS
