"""Client and AsyncClient against real server processes: results, datatypes, errors, metadata."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import grpc
import numpy as np
import pytest

from clients import (
    NO_RETRY,
    AsyncClient,
    Backoff,
    Client,
    DeadlineExceeded,
    InvalidArgument,
    NotFound,
    Overloaded,
    RetryPolicy,
    SluicewayError,
    Unavailable,
)
from tests.integration import client_fixtures
from tests.integration.client_fixtures import features
from tests.support.dispatched import dispatched
from tests.support.server_process import ServerProcess, wait_until_async

client_limits_server = client_fixtures.client_limits_server
mlp_reference = client_fixtures.mlp_reference

NUMPY = {
    "BOOL": np.bool_, "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32, "UINT64": np.uint64,
    "INT8": np.int8, "INT16": np.int16, "INT32": np.int32, "INT64": np.int64,
    "FP16": np.float16, "FP32": np.float32, "FP64": np.float64,
}  # fmt: skip


def every_datatype(rows: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(rows)
    inputs = {f"in_{wire}": rng.integers(0, 100, (rows, 3)).astype(dtype) for wire, dtype in NUMPY.items()}
    inputs["in_BOOL"] = rng.integers(0, 2, (rows, 3)).astype(np.bool_)
    inputs["in_FP16"] = (rng.standard_normal((rows, 3)) * 100).astype(np.float16)
    return inputs


def test_sync_and_async_results_equal_onnxruntime(
    zoo_server: ServerProcess, mlp_reference: Callable[[np.ndarray], np.ndarray]
) -> None:
    async def async_scores(data: np.ndarray) -> np.ndarray:
        async with AsyncClient(zoo_server.address) as client:
            return (await client.infer("mlp", {"features": data}, outputs=["scores"]))["scores"]

    with Client(zoo_server.address) as client:
        for rows in (1, 7, 128):
            data = features(rows, seed=rows)
            expected = mlp_reference(data)
            first = client.infer("mlp", {"features": data}, version=1, request_id=f"r{rows}")["scores"]
            again = client.infer("mlp", {"features": data}, timeout_s=30, priority=1)["scores"]
            from_async = asyncio.run(async_scores(data))
            assert first.shape == (rows, 2) and first.dtype == np.float32
            assert not first.flags.writeable  # a zero-copy view of the answer
            for result in (first, again, from_async):
                np.testing.assert_allclose(result, expected, rtol=1e-5, atol=1e-5)


def test_every_datatype_round_trips(zoo_server: ServerProcess) -> None:
    inputs = every_datatype(2)
    words = np.array([["a", "", "é"], ["x" * 300, "\x00\x01", "z"]])  # str in, bytes out
    with Client(zoo_server.address) as client:
        out = client.infer("identity", {**inputs, "in_BYTES": words})
    for name, array in inputs.items():
        got = out[name.replace("in_", "out_")]
        assert got.dtype == array.dtype and got.shape == (2, 3)
        np.testing.assert_array_equal(got, array)
    assert out["out_BYTES"].dtype == object
    assert out["out_BYTES"].tolist() == [[w.encode() for w in row] for row in words.tolist()]


def test_bytes_in_a_list_keep_their_trailing_nul_bytes(zoo_server: ServerProcess) -> None:
    """np.asarray made the list a fixed-width "S" array, which dropped trailing NULs: b"a\\x00" came
    back b"a" and b"\\x00\\x00" came back empty."""
    blobs = [[b"a\x00", b"\x00\x00", b"z"]]
    words = [["x\x00", "\x00", ""]]
    with Client(zoo_server.address) as client:
        for given, expected in ((blobs, blobs), (words, [[b"x\x00", b"\x00", b""]])):
            out = client.infer("identity", {**every_datatype(1), "in_BYTES": given})
            assert out["out_BYTES"].tolist() == expected


async def test_every_datatype_round_trips_async_with_bytes_objects(zoo_server: ServerProcess) -> None:
    inputs = every_datatype(5)
    blobs = np.empty((5, 3), dtype=object)
    blobs[:] = [[bytes([i, j]) * (i + 1) for j in range(3)] for i in range(5)]
    async with AsyncClient(zoo_server.address) as client:
        out = await client.infer(
            "identity", {**inputs, "in_BYTES": blobs}, outputs=["out_FP16", "out_BYTES", "out_UINT64"]
        )
    assert set(out) == {"out_FP16", "out_BYTES", "out_UINT64"}
    np.testing.assert_array_equal(out["out_FP16"], inputs["in_FP16"])
    np.testing.assert_array_equal(out["out_UINT64"], inputs["in_UINT64"])
    assert out["out_BYTES"].tolist() == blobs.tolist()


def test_request_errors_map_to_their_classes_and_are_not_retried(zoo_server: ServerProcess) -> None:
    def failures() -> int:
        (stats,) = client.model_statistics("mlp").model_stats
        return stats.inference_stats.fail.count

    with Client(zoo_server.address) as client:
        with pytest.raises(NotFound) as not_found:
            client.infer("nope", {"features": features(1)})
        assert not_found.value.code == grpc.StatusCode.NOT_FOUND and "nope" in not_found.value.message
        with pytest.raises(NotFound):
            client.infer("mlp", {"features": features(1)}, version=7)
        before = failures()
        with pytest.raises(InvalidArgument) as invalid:
            client.infer("mlp", {"features": features(1)[:, :63]})
        assert invalid.value.code == grpc.StatusCode.INVALID_ARGUMENT and "features" in invalid.value.message
        assert failures() - before == 1  # sent once: request errors are never retried
        with pytest.raises(InvalidArgument):
            client.infer("mlp", {"feature": features(1)})
        with pytest.raises(InvalidArgument):
            client.infer("mlp", {"features": features(129)})  # max_batch_size is 128
        with pytest.raises(DeadlineExceeded) as late:
            client.infer("resnet", {"image": np.zeros((1, 3, 224, 224), np.float32)}, timeout_s=1e-4)
        assert isinstance(late.value, SluicewayError) and late.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
        assert client.infer("mlp", {"features": features(1)})["scores"].shape == (1, 2)  # still serving


async def test_full_queue_is_overloaded_and_retries_get_through(client_limits_server: ServerProcess) -> None:
    x = {"x": np.ones((1, 1), np.float32)}
    async with AsyncClient(client_limits_server.address, retry=NO_RETRY, default_timeout_s=120) as client:

        async def left_queue() -> int:  # requests that left the queue for a batch
            return await asyncio.to_thread(dispatched, client_limits_server.metrics_port, "slow_q2")

        before = await left_queue()
        blocker = asyncio.create_task(client.infer("slow_q2", x))

        async def blocker_runs() -> bool:
            return blocker.done() or await left_queue() > before  # done: `await blocker` tells how

        # Read from the server, not assumed after a sleep: the blocker occupies the only instance, so
        # of the ten sent at once two wait in the queue and the rest find it full.
        await wait_until_async(blocker_runs, "the blocker to be dispatched")
        results = await asyncio.gather(
            *(client.infer("slow_q2", x) for _ in range(10)), return_exceptions=True
        )
        await blocker
    errors = [r for r in results if isinstance(r, BaseException)]
    assert errors, "two requests fit in the queue, so some of ten must be refused"
    # Triton's UNAVAILABLE "Exceeds maximum queue size", still our Overloaded (retried with backoff).
    full = "Exceeds maximum queue size"
    assert all(isinstance(e, Overloaded) and full in e.message for e in errors), errors
    for result in results:
        if not isinstance(result, BaseException):
            np.testing.assert_allclose(result["y"], np.ones((1, 1)), rtol=1e-5)
    # With retries (jittered backoff) the same burst all gets through, given time.
    patient = RetryPolicy(max_attempts=100, backoff=Backoff(0.05, 0.5))
    async with AsyncClient(client_limits_server.address, retry=patient, default_timeout_s=120) as client:
        results = await asyncio.gather(*(client.infer("slow_q2", x) for _ in range(10)))
    for result in results:
        np.testing.assert_allclose(result["y"], np.ones((1, 1)), rtol=1e-5)


def test_unloaded_model_is_unavailable_and_retries_stop_before_the_deadline(
    client_limits_server: ServerProcess,
) -> None:
    data = {"features": features(2)}
    with Client(client_limits_server.address) as client:
        assert client.model_ready("spare")
        client.unload_model("spare")
        try:
            assert not client.model_ready("spare")
            with (
                Client(client_limits_server.address, retry=NO_RETRY) as once,
                pytest.raises(Unavailable) as info,
            ):
                once.infer("spare", data)
            assert info.value.code == grpc.StatusCode.UNAVAILABLE and "spare" in info.value.message
            # Retried (UNAVAILABLE is retryable) until attempts or time run out: the last error, not
            # a deadline, is what the caller sees.
            quick = RetryPolicy(max_attempts=4, backoff=Backoff(0.01, 0.05))
            with Client(client_limits_server.address, retry=quick) as retrying, pytest.raises(Unavailable):
                retrying.infer("spare", data, timeout_s=5)
        finally:
            client.load_model("spare")
        assert client.model_ready("spare")
        assert client.infer("spare", data)["scores"].shape == (2, 2)


def test_health_metadata_config_and_statistics(zoo_server: ServerProcess) -> None:
    with Client(zoo_server.address) as client:
        assert client.server_live()
        assert not client.server_ready()  # strict: the zoo holds models that failed to load
        assert client.model_ready("mlp") and client.model_ready("mlp", version=1)
        assert not client.model_ready("corrupt") and not client.model_ready("nope")
        assert client.server_metadata().name == "sluiceway"
        meta = client.model_metadata("mlp")
        assert [(t.name, t.datatype, list(t.shape)) for t in meta.inputs] == [("features", "FP32", [-1, 64])]
        assert [(t.name, list(t.shape)) for t in meta.outputs] == [("scores", [-1, 2])]
        config = client.model_config("mlp")
        assert config.name == "mlp" and config.max_batch_size == 128
        with pytest.raises(NotFound):
            client.model_metadata("nope")
        (before,) = client.model_statistics("mlp").model_stats
        client.infer("mlp", {"features": features(3)})
        (after,) = client.model_statistics("mlp", version=1).model_stats
        assert after.inference_count - before.inference_count == 3
        assert {m.name for m in client.repository_index().models} >= {"mlp", "identity", "corrupt"}
        assert client.endpoint_health() == {zoo_server.address: True}


async def test_async_health_and_metadata(zoo_server: ServerProcess) -> None:
    async with AsyncClient(zoo_server.address) as client:
        assert await client.server_live()
        assert await client.model_ready("identity")
        assert (await client.model_config("identity")).max_batch_size > 0
        assert len((await client.model_metadata("identity")).inputs) == 13
        assert (await client.server_metadata()).name == "sluiceway"
        stats = await client.model_statistics()
        assert "mlp" in {s.name for s in stats.model_stats}
