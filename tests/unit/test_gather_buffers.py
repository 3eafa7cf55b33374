"""A CPU instance's largest batches gathered into reused buffers (server/backends/gather_buffers.py):
which batches, where they land, that a buffer is reused and never read after it goes back, and the
onnxruntime backend's plain path through it."""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from batcher.scatter import Gathered
from batcher.types import Array
from server.backends.gather_buffers import (
    GATHER_MIN_BYTES,
    PlainMemory,
    run_gathered,
    worth_staging,
)
from server.backends.onnxruntime_backend import CPU, OrtBackend, OrtOptions
from server.backends.pinned import ALIGN, PinnedStaging


def parts(rows: list[int], width: int = 4, dtype: Any = np.float32) -> Gathered:
    """A batch of requests of `rows` rows each, numbered through (row i holds i in every column)."""
    requests, start = [], 0
    for n in rows:
        block = np.repeat(np.arange(start, start + n, dtype=dtype)[:, None], width, axis=1)
        requests.append({"x": block})
        start += n
    return Gathered(requests, start)


def inside(array: Array, memory: PlainMemory) -> bool:
    address = array.ctypes.data
    return any(b.ctypes.data <= address < b.ctypes.data + b.nbytes for b in memory._held.values())


def test_plain_memory_gives_aligned_buffers_it_holds_until_freed() -> None:
    memory = PlainMemory()
    pointers = [memory.host_alloc(n) for n in (1, 1000, 1 << 20)]
    blocks = list(memory._held.values())
    assert all(p % ALIGN == 0 for p in pointers)
    assert all(b.ctypes.data <= p < b.ctypes.data + ALIGN for p, b in zip(pointers, blocks, strict=True))
    assert memory.held_bytes == 1 + 1000 + (1 << 20) + 3 * ALIGN
    memory.free_host(pointers[1])
    assert memory.held_bytes == 1 + (1 << 20) + 2 * ALIGN


def test_only_a_gathered_numeric_batch_of_the_threshold_or_more_is_staged() -> None:
    batch = parts([3, 5])  # 8 rows x 4 float32: 128 bytes
    assert worth_staging(batch, min_bytes=128)
    assert not worth_staging(batch, min_bytes=129)
    assert not worth_staging({"x": np.zeros((8, 4), np.float32)}, min_bytes=1)  # one request: no gather
    assert not worth_staging(parts([3, 5], dtype=object), min_bytes=1)  # BYTES' objects
    assert not worth_staging(parts([3, 5], dtype=ml_dtypes.bfloat16), min_bytes=1)  # BF16 runs its own way
    assert worth_staging(parts([3, 5], dtype=np.int64), min_bytes=256)
    two = Gathered([{"a": np.zeros((2, 4), np.float32), "b": np.zeros((2, 4), np.float32)}] * 2, 4)
    assert worth_staging(two, min_bytes=128) and not worth_staging(two, min_bytes=129)  # both inputs count
    assert GATHER_MIN_BYTES == 32 << 20


def test_a_large_batch_runs_from_a_buffer_and_the_next_reuses_it() -> None:
    memory = PlainMemory()
    staging = PinnedStaging(memory, 2)
    seen: list[Array] = []

    def run(feed: dict[str, Array]) -> list[Array]:
        seen.append(feed["x"])
        return [feed["x"].sum(axis=1)]

    first = run_gathered(staging, parts([2, 3]), run, min_bytes=1)
    address = seen[0].ctypes.data
    assert inside(seen[0], memory) and seen[0].shape == (5, 4)
    np.testing.assert_array_equal(first[0], np.arange(5) * 4)
    second = run_gathered(staging, parts([1, 1, 2]), run, min_bytes=1)
    assert seen[1].ctypes.data == address  # the same buffer, not a new one
    np.testing.assert_array_equal(second[0], np.arange(4) * 4)
    np.testing.assert_array_equal(first[0], np.arange(5) * 4)  # the first's outputs were its own


def test_an_output_that_views_the_staged_inputs_is_copied_before_the_buffer_goes_back() -> None:
    memory = PlainMemory()
    staging = PinnedStaging(memory, 1)
    kept = np.zeros(3)

    def echo(feed: dict[str, Array]) -> list[Any]:
        return [feed["x"][1:], kept]  # a view of the buffer, and an array of the run's own

    out = run_gathered(staging, parts([2, 2]), echo, min_bytes=1)
    assert not inside(out[0], memory)
    assert out[1] is kept  # not copied: it views nothing staged
    run_gathered(staging, parts([4], width=4), lambda feed: [feed["x"] * 0], min_bytes=1)  # (one part)
    run_gathered(staging, Gathered([{"x": np.full((2, 4), -1.0, np.float32)}] * 2, 4), echo, min_bytes=1)
    np.testing.assert_array_equal(out[0][:, 0], [1, 2, 3])  # the next batches overwrote the buffer, not it


def test_small_batches_single_requests_and_no_staging_run_as_before() -> None:
    memory = PlainMemory()
    staging = PinnedStaging(memory, 1)
    fed: list[Array] = []

    def run(feed: dict[str, Array]) -> list[Array]:
        fed.append(feed["x"])
        return [feed["x"][:, 0].copy()]

    alone = np.arange(8, dtype=np.float32).reshape(2, 4)
    assert run_gathered(staging, {"x": alone}, run, min_bytes=1)[0].tolist() == [0, 4]
    assert fed[-1] is alone  # a single request's array as it came
    assert run_gathered(staging, parts([1, 2]), run)[0].tolist() == [0, 1, 2]  # under 32 MiB
    assert run_gathered(None, parts([1, 2]), run, min_bytes=1)[0].tolist() == [0, 1, 2]
    assert memory.held_bytes == 0  # none of them took a buffer


def test_a_batch_that_finds_every_buffer_busy_is_gathered_as_before() -> None:
    memory = PlainMemory()
    staging = PinnedStaging(memory, 1)
    inner: list[Array] = []

    def outer_run(feed: dict[str, Array]) -> list[Array]:
        def inner_run(inner_feed: dict[str, Array]) -> list[Array]:
            inner.append(inner_feed["x"])
            return [inner_feed["x"][:, 0].copy()]

        assert run_gathered(staging, parts([1, 1]), inner_run, min_bytes=1)[0].tolist() == [0, 1]
        return [feed["x"][:, 0].copy()]

    assert run_gathered(staging, parts([2, 1]), outer_run, min_bytes=1)[0].tolist() == [0, 1, 2]
    assert not inside(inner[0], memory)  # the only buffer was the outer batch's


def _dense(path: Path) -> Path:
    w = numpy_helper.from_array(np.eye(8, 3, dtype=np.float32), "w")
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "dense", [x], [y], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.parent.mkdir(parents=True)
    onnx.save(model, str(path))
    return path


def test_the_cpu_backends_large_batches_go_through_its_buffers(tmp_path: Path) -> None:
    """A 32 MiB batch of two requests: onnxruntime's answer, and the instance's buffer now holds it;
    a smaller batch took none."""
    path = _dense(tmp_path / "m" / "1" / "model.onnx")
    backend = OrtBackend(path, OrtOptions(), [(CPU, {})], ThreadPoolExecutor(1), model_name="m")
    try:
        staging = backend.io.staging
        assert backend.io.mode == "plain" and staging is not None
        rows = GATHER_MIN_BYTES // (8 * 4)
        x = np.random.default_rng(0).standard_normal((rows, 8)).astype(np.float32)
        backend.run_blocking(Gathered([{"x": x[:10]}, {"x": x[10:20]}], 20))
        assert staging.pinned_bytes == 0
        got = backend.run_blocking(Gathered([{"x": x[:100]}, {"x": x[100:]}], rows))
        assert staging.pinned_bytes >= GATHER_MIN_BYTES
        (want,) = ort.InferenceSession(str(path), providers=[CPU]).run(None, {"x": x})
        np.testing.assert_array_equal(got["y"], want)
    finally:
        backend.close()


def test_a_batch_whose_buffer_cannot_be_had_is_gathered_as_before(caplog: pytest.LogCaptureFixture) -> None:
    """Out of memory for a buffer: the batch runs from a new array, said once in the log."""

    class Scarce(PlainMemory):
        def host_alloc(self, nbytes: int) -> int:
            raise MemoryError(f"{nbytes} bytes")

    memory = Scarce()
    with caplog.at_level(logging.WARNING, logger="server.backends.pinned"):
        out = run_gathered(
            PinnedStaging(memory, 1), parts([1, 2]), lambda feed: [feed["x"][:, 0]], min_bytes=1
        )
    assert out[0].tolist() == [0, 1, 2] and memory.held_bytes == 0
    assert [r.getMessage().split(":")[0] for r in caplog.records] == [
        f"no staging buffer of {1 << 20} bytes for a batch"
    ]
