"""The response cache over a real port: hits skip the batcher, statistics count hits and misses."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from clients import Client
from protos import grpc_service_pb2 as pb
from protos import grpc_service_pb2_grpc as pb_grpc
from tests.integration.conftest import identity_model
from tests.support.repositories import write_model
from tests.support.server_process import ServerProcess

CACHED = "response_cache { enable: true }\n"
_NUMPY = {
    "BOOL": np.bool_, "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32, "UINT64": np.uint64,
    "INT8": np.int8, "INT16": np.int16, "INT32": np.int32, "INT64": np.int64,
    "FP16": np.float16, "FP32": np.float32, "FP64": np.float64,
}  # fmt: skip


@pytest.fixture(scope="module")
def cache_repo(demo_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`cached` (mlp with the cache), `plain` (the same mlp without it), `cached_identity`."""
    repo = tmp_path_factory.mktemp("response-cache")
    mlp = demo_repo / "mlp" / "1" / "model.onnx"
    config = (demo_repo / "mlp" / "config.pbtxt").read_text()
    write_model(repo, "cached", mlp, config.replace('"mlp"', '"cached"') + CACHED)
    write_model(repo, "plain", mlp, config.replace('"mlp"', '"plain"'))
    identity = identity_model(tmp_path_factory.mktemp("response-cache-files") / "identity.onnx")
    write_model(repo, "cached_identity", identity, CACHED)
    return repo


@pytest.fixture(scope="module")
def cache_server(cache_repo: Path) -> Iterator[ServerProcess]:
    args = (
        "--model-repository",
        str(cache_repo),
        "--response-cache-bytes",
        "1000000",
        "--model-control-mode",
        "explicit",
        "--load-model",
        "*",
    )
    with ServerProcess(*args) as server:
        yield server


def _stats(client: Client, model: str) -> pb.ModelStatistics:
    (stats,) = client.model_statistics(model).model_stats
    return stats


def _features(seed: int, rows: int = 2) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((rows, 64)).astype(np.float32)


def test_second_identical_request_is_a_hit_that_skips_the_batcher(cache_server: ServerProcess) -> None:
    # Other tests in this module use `cached` too, in any order: count from what is there now.
    # Seeds 1 and 2 are this test's own inputs; no other test sends them to `cached`.
    with Client(cache_server.address) as client:
        before = _stats(client, "cached")
        hits, misses = before.inference_stats.cache_hit.count, before.inference_stats.cache_miss.count
        executions, rows = before.execution_count, before.inference_count

        first = client.infer("cached", {"features": _features(1)})["scores"]
        after_miss = _stats(client, "cached")
        assert after_miss.inference_stats.cache_miss.count == misses + 1
        assert after_miss.inference_stats.cache_miss.ns > before.inference_stats.cache_miss.ns
        assert after_miss.inference_stats.cache_hit.count == hits
        assert after_miss.execution_count == executions + 1 and after_miss.inference_count == rows + 2

        second = client.infer("cached", {"features": _features(1)})["scores"]
        after_hit = _stats(client, "cached")
        np.testing.assert_array_equal(second, first)
        assert after_hit.inference_stats.cache_hit.count == hits + 1
        assert after_hit.inference_stats.cache_hit.ns > before.inference_stats.cache_hit.ns
        assert after_hit.inference_stats.cache_miss.count == misses + 1
        # Triton's semantics: a hit is a success, but nothing was computed.
        assert after_hit.execution_count == executions + 1 and after_hit.inference_count == rows + 2
        assert after_hit.inference_stats.success.count == after_miss.inference_stats.success.count + 1
        # Triton's queue count includes cache hits (with no wait here); its compute counts do not.
        assert after_hit.inference_stats.queue.count == after_miss.inference_stats.queue.count + 1
        assert after_hit.inference_stats.queue.ns == after_miss.inference_stats.queue.ns
        assert after_hit.inference_stats.compute_infer.count == after_miss.inference_stats.compute_infer.count

        # Other inputs (values or rows) miss and compute.
        client.infer("cached", {"features": _features(2)})
        client.infer("cached", {"features": _features(1, rows=3)})
        after_other = _stats(client, "cached")
        assert after_other.inference_stats.cache_miss.count == misses + 3
        assert after_other.inference_stats.cache_hit.count == hits + 1
        assert after_other.execution_count == executions + 3


def test_typed_contents_request_hits_the_entry_of_a_raw_request(cache_server: ServerProcess) -> None:
    data = _features(10, rows=1)
    with Client(cache_server.address) as client:
        raw = client.infer("cached", {"features": data})["scores"]
        before = _stats(client, "cached")
    request = pb.ModelInferRequest(model_name="cached")
    request.inputs.add(name="features", datatype="FP32", shape=[1, 64]).contents.fp32_contents.extend(
        data.ravel().tolist()
    )
    with grpc.insecure_channel(cache_server.address) as channel:
        response = pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=30)
    typed = np.frombuffer(response.raw_output_contents[0], dtype=np.float32).reshape(1, 2)
    np.testing.assert_array_equal(typed, raw)
    with Client(cache_server.address) as client:
        after = _stats(client, "cached")
    assert after.inference_stats.cache_hit.count == before.inference_stats.cache_hit.count + 1
    assert after.execution_count == before.execution_count


def test_requested_outputs_apply_to_hits(cache_server: ServerProcess) -> None:
    inputs = {
        "in_FP32": np.arange(6, dtype=np.float32).reshape(2, 3),
        "in_INT64": np.arange(6, dtype=np.int64).reshape(2, 3),
        "in_BYTES": np.array([[b"a", b"", b"c"], [b"dd", b"e", b"f"]], dtype=object),
    }
    with Client(cache_server.address) as client:
        # The identity model has one input and output per datatype; send zeros for the rest.
        metadata = client.model_metadata("cached_identity")
        for tensor in metadata.inputs:
            if tensor.name not in inputs and tensor.datatype != "BYTES":
                inputs[tensor.name] = np.zeros((2, 3), dtype=_NUMPY[tensor.datatype])
        everything = client.infer("cached_identity", inputs)
        assert len(everything) == len(metadata.outputs)
        some = client.infer("cached_identity", inputs, outputs=["out_INT64", "out_BYTES"])
        stats = _stats(client, "cached_identity")
    assert set(some) == {"out_INT64", "out_BYTES"}
    np.testing.assert_array_equal(some["out_INT64"], inputs["in_INT64"])
    assert some["out_BYTES"].tolist() == inputs["in_BYTES"].tolist()
    assert stats.inference_stats.cache_miss.count == 1 and stats.inference_stats.cache_hit.count == 1
    assert stats.execution_count == 1


def test_model_without_response_cache_never_uses_it(cache_server: ServerProcess) -> None:
    with Client(cache_server.address) as client:
        for _ in range(3):
            client.infer("plain", {"features": _features(1)})
        stats = _stats(client, "plain")
    assert stats.inference_stats.cache_hit.count == stats.inference_stats.cache_miss.count == 0
    assert stats.inference_stats.cache_hit.ns == stats.inference_stats.cache_miss.ns == 0
    assert stats.execution_count == 3


def test_reloading_a_model_drops_its_cached_outputs(cache_server: ServerProcess) -> None:
    data = {"features": _features(20)}
    with Client(cache_server.address) as client:
        client.infer("cached", data)
        client.infer("cached", data)
        before = _stats(client, "cached")
        assert before.inference_stats.cache_hit.count >= 1
        # Its files did not change: the version is kept (statistics go on), its entries dropped.
        client.load_model("cached", timeout_s=60)
        client.infer("cached", data)
        reloaded = _stats(client, "cached")
    assert reloaded.inference_stats.cache_miss.count == before.inference_stats.cache_miss.count + 1
    assert reloaded.inference_stats.cache_hit.count == before.inference_stats.cache_hit.count
    assert reloaded.execution_count == before.execution_count + 1


def test_response_cache_without_server_cache_fails_to_load(cache_repo: Path) -> None:
    env = {"SLUICEWAY_RESPONSE_CACHE_BYTES": "0"}
    with (
        ServerProcess("--model-repository", str(cache_repo), env=env) as server,
        Client(server.address) as client,
    ):
        index = {m.name: m for m in client.repository_index().models}
        assert index["plain"].state == "READY"
        for name in ("cached", "cached_identity"):
            assert index[name].state == "UNAVAILABLE"
            assert "response_cache" in index[name].reason
            assert "SLUICEWAY_RESPONSE_CACHE_BYTES" in index[name].reason
