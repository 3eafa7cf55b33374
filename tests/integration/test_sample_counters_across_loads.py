"""The sample counters on /metrics are counters for the process: a version's unload and reload
continue them, and samples written after their version was unloaded still count. They had lived on
each load's sampler: 5 samples on disk after an unload and reload, 0 on /metrics (a tester)."""

from __future__ import annotations

import asyncio
import re
import urllib.request
from pathlib import Path

import grpc
import numpy as np

from clients import NO_RETRY, Client
from protos import grpc_service_pb2 as pb
from protos import grpc_service_pb2_grpc as pb_grpc
from server.app import build_server
from server.settings import ServerSettings
from tests.integration.client_fixtures import features
from tests.support.repositories import write_model

SAMPLED = """
max_batch_size: 128
dynamic_batching { }
parameters { key: "sample_ratio" value: { string_value: "1" } }
"""


def request(seed: int) -> pb.ModelInferRequest:
    data = np.random.default_rng(seed).standard_normal((1, 64)).astype(np.float32)
    return pb.ModelInferRequest(
        model_name="mlp",
        inputs=[pb.ModelInferRequest.InferInputTensor(name="features", datatype="FP32", shape=[1, 64])],
        raw_input_contents=[data.tobytes()],
    )


def written(port: int) -> float | None:
    """sluiceway_samples_written_total of mlp version 1 on /metrics (None: no such series)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as answer:
        page = answer.read().decode()
    found = re.search(r'^sluiceway_samples_written_total\{[^}]*model="mlp"[^}]*\} (\S+)$', page, re.M)
    return None if found is None else float(found.group(1))


def rows_on_disk(samples: Path) -> int:
    total = 0
    for path in (samples / "mlp" / "1").glob("samples-*.npz"):
        with np.load(path) as data:
            total += int(data["rows"].sum())
    return total


async def test_sample_counters_go_on_across_an_unload_and_a_reload(demo_repo: Path, tmp_path: Path) -> None:
    repo, samples = tmp_path / "repo", tmp_path / "samples"
    write_model(repo, "mlp", demo_repo / "mlp" / "1" / "model.onnx", SAMPLED)
    settings = ServerSettings(
        model_repository=repo,
        cache_dir=tmp_path,
        port=0,
        metrics_port=0,
        sample_dir=samples,
        model_control_mode="explicit",
        load_model=("mlp",),
    )
    server = build_server(settings)
    await server.start()
    sampling = server.models.sampling
    load = pb.RepositoryModelLoadRequest(model_name="mlp")
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            for seed in range(5):
                await stub.ModelInfer(request(seed), timeout=30)
            # Unloaded (and loaded again) with its samples queued or written: they count all the same.
            await stub.RepositoryModelUnload(pb.RepositoryModelUnloadRequest(model_name="mlp"), timeout=60)
            assert await asyncio.to_thread(sampling.flush, 30)
            assert rows_on_disk(samples) == 5
            assert await asyncio.to_thread(written, server.metrics_port) == 5  # had no series at all
            await stub.RepositoryModelLoad(load, timeout=60)
            assert await asyncio.to_thread(written, server.metrics_port) == 5  # had started at 0
            for seed in range(5, 8):
                await stub.ModelInfer(request(seed), timeout=30)
            await stub.RepositoryModelUnload(pb.RepositoryModelUnloadRequest(model_name="mlp"), timeout=60)
            await stub.RepositoryModelLoad(load, timeout=60)
        assert await asyncio.to_thread(sampling.flush, 30)
        assert rows_on_disk(samples) == 8
        assert await asyncio.to_thread(written, server.metrics_port) == 8  # had read 0
    finally:
        await server.stop(grace_s=5)


def series_of(port: int, model: str) -> list[str]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as answer:
        page = answer.read().decode()
    return [
        line
        for line in page.splitlines()
        if line.startswith("sluiceway_samples_") and f'model="{model}"' in line
    ]


async def test_a_name_that_leaves_the_index_takes_its_sample_counters(
    demo_repo: Path, tmp_path: Path
) -> None:
    """Kept across loads, not for good: an upload-only name, unloaded, leaves the index and its
    counters with it (each distinct name would otherwise keep three series for the process's life)."""
    repo = tmp_path / "repo"
    write_model(repo, "mlp", demo_repo / "mlp" / "1" / "model.onnx", SAMPLED)
    settings = ServerSettings(
        model_repository=repo,
        cache_dir=tmp_path,
        port=0,
        metrics_port=0,
        sample_dir=tmp_path / "samples",
        model_control_mode="explicit",
        load_model=("mlp",),
    )
    server = build_server(settings)
    await server.start()
    onnx = (demo_repo / "mlp" / "1" / "model.onnx").read_bytes()
    config = '{"max_batch_size": 2, "parameters": {"sample_ratio": {"string_value": "1"}}}'
    try:
        with Client(f"127.0.0.1:{server.port}", retry=NO_RETRY) as client:
            await asyncio.to_thread(client.load_model, "sent", config=config, files={"1/model.onnx": onnx})
            for name in ("sent", "mlp"):
                await asyncio.to_thread(client.infer, name, {"features": features(1)})
            assert await asyncio.to_thread(server.models.sampling.flush, 30)
            assert len(await asyncio.to_thread(series_of, server.metrics_port, "sent")) == 3
            await asyncio.to_thread(client.unload_model, "sent")
            await asyncio.to_thread(client.unload_model, "mlp")
        assert await asyncio.to_thread(series_of, server.metrics_port, "sent") == []  # gone with the name
        assert len(await asyncio.to_thread(series_of, server.metrics_port, "mlp")) == 3  # still indexed
    finally:
        await server.stop(grace_s=5)
