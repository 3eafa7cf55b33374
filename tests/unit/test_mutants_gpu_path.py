"""What the mutation run of the GPU path's staging and padding (server/backends/pinned.py,
batch_padding.py) found untested: a scalar input staged, only the named inputs staged, the padded
layout's bytes, a free buffer of exactly the size reused and the smallest one that fits taken, the
unstaged batch's log line; a 0-d graph input, a batch of exactly the largest size, the small-batch
count's start, the run options on every path, a 1-D output cut back, the size read through a
wrapper. Without a GPU (tests/support/fake_cudart.py); tests/MUTANTS.md lists them."""

from __future__ import annotations

import ctypes
import logging
from collections.abc import Mapping
from types import SimpleNamespace
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

from batcher.types import Array
from server.backends.batch_padding import (
    PaddedRunner,
    Padding,
    StickySize,
    batch_major,
    shape_changes,
    sticky_size,
)
from server.backends.cudart import CudaRuntime
from server.backends.pinned import ALIGN, PinnedStaging, layout
from server.models.onnx_completion import OnnxTensor
from tests.support.fake_cudart import FakeCudart

MIB = 1 << 20


def read(pointer: int, like: np.ndarray) -> np.ndarray:
    return np.frombuffer(ctypes.string_at(pointer, like.nbytes), dtype=like.dtype).reshape(like.shape)


# -- pinned.py ------------------------------------------------------------------------------------


def test_a_scalar_input_is_staged_as_its_one_value() -> None:
    """A 0-d input (no rows) is copied whole into its aligned slot, beside a batched one."""
    staging = PinnedStaging(CudaRuntime(FakeCudart()), max_buffers=1)
    scale = np.asarray(2.5, np.float32)
    x = np.arange(6, dtype=np.int32).reshape(3, 2)
    with staging.stage({"scale": scale, "x": x}) as pointers:
        assert pointers is not None and pointers["x"] - pointers["scale"] == ALIGN
        assert read(pointers["scale"], scale) == 2.5
        np.testing.assert_array_equal(read(pointers["x"], x), x)


def test_only_the_named_inputs_are_staged_and_laid_out() -> None:
    """`names` picks the inputs: the others take no room and get no address."""
    arrays: dict[str, Array] = {"a": np.zeros(300, np.float32), "b": np.arange(4, dtype=np.int64)}
    assert layout(arrays, names=["b"]) == ({"b": 0}, ALIGN)
    staging = PinnedStaging(CudaRuntime(FakeCudart()), max_buffers=1)
    with staging.stage(arrays, names=["b"]) as pointers:
        assert pointers is not None and list(pointers) == ["b"]
        np.testing.assert_array_equal(read(pointers["b"], arrays["b"]), arrays["b"])


def test_the_layout_counts_the_padded_rows() -> None:
    """Padded to 8 rows, a (3, 32) float32 input needs 1,024 bytes, not the 512 its 3 rows take."""
    arrays: dict[str, Array] = {"x": np.zeros((3, 32), np.float32), "ids": np.zeros(3, np.int64)}
    assert layout(arrays) == ({"x": 0, "ids": 512}, 512 + ALIGN)
    assert layout(arrays, pad_to=8) == ({"x": 0, "ids": 1024}, 1024 + ALIGN)


def test_no_buffers_at_all_is_refused_saying_so() -> None:
    with pytest.raises(ValueError, match=r"^max_buffers must be at least 1$"):
        PinnedStaging(CudaRuntime(FakeCudart()), max_buffers=0)


def test_a_free_buffer_of_exactly_the_size_is_reused() -> None:
    """A batch of exactly 1 MiB finds the 1 MiB buffer it left: no second allocation."""
    lib = FakeCudart()
    staging = PinnedStaging(CudaRuntime(lib), max_buffers=1)
    batch = {"x": np.ones(MIB, np.uint8)}
    with staging.stage(batch) as first:
        assert first is not None
    with staging.stage(batch) as again:
        assert again == first
    assert lib.cudaHostAlloc.calls == 1 and list(lib.pinned.values()) == [MIB]


def test_a_batch_takes_the_smallest_free_buffer_that_fits() -> None:
    """With a 1 MiB and a 3 MiB buffer free (the larger given back first), a small batch takes the
    1 MiB one, so a large batch at the same time still finds the 3 MiB one: nothing reallocated."""
    lib = FakeCudart()
    staging = PinnedStaging(CudaRuntime(lib), max_buffers=2, max_bytes=8 * MIB)
    small, large = {"x": np.ones(10, np.uint8)}, {"x": np.ones(3 * MIB, np.uint8)}
    with staging.stage(small) as s, staging.stage(large) as b:
        assert s is not None and b is not None
        small_at, large_at = s["x"], b["x"]
    with staging.stage(small) as s, staging.stage(large) as b:
        assert s == {"x": small_at} and b == {"x": large_at}
    assert lib.cudaHostAlloc.calls == 2 and sorted(lib.pinned.values()) == [MIB, 3 * MIB]


def test_an_unstaged_batch_says_why_in_the_log(caplog: pytest.LogCaptureFixture) -> None:
    lib = FakeCudart()
    lib.fail_allocs = True
    staging = PinnedStaging(CudaRuntime(lib), max_buffers=1)
    with (
        caplog.at_level(logging.WARNING, "server.backends.pinned"),
        staging.stage({"x": np.ones(8, np.float32)}) as pointers,
    ):
        assert pointers is None
    (line,) = [r.getMessage() for r in caplog.records if r.name == "server.backends.pinned"]
    assert line.startswith(f"no staging buffer of {MIB} bytes for a batch: ")
    assert "cudaErrorMemoryAllocation" in line


# -- batch_padding.py -----------------------------------------------------------------------------

OPTIONS = ort.RunOptions()


def test_a_graph_with_a_scalar_input_is_not_padded() -> None:
    """A 0-d input has no batch dimension: not batch-major (and not an error)."""
    x, y = OnnxTensor("x", "tensor(float)", ["N", 4]), OnnxTensor("y", "tensor(float)", ["N", 4])
    scale = OnnxTensor("scale", "tensor(float)", [])
    assert not batch_major([x, scale], [y])
    assert not batch_major([scale], [y])


def test_a_batch_of_exactly_the_largest_size_sets_the_size() -> None:
    """A batch of max_batch_size rows is the server's: the size becomes it (one change), and a
    small batch after it runs at it."""
    size = StickySize(16)
    assert size.size_for(16) == 16 and size.current == 16 and size.changes == 1
    assert size.size_for(3) == 16 and size.changes == 1


def test_the_count_of_small_batches_starts_at_zero() -> None:
    """On a fresh size, one batch counted small (no rows) is the first of shrink_after=2: the size
    does not change."""
    size = StickySize(8, shrink_after=2)
    assert size.size_for(0) == 0 and size.changes == 0


class Recorded:
    """A runner recording what each run got: the feed's rows (None when it has none) and options."""

    def __init__(self) -> None:
        self.runs: list[tuple[Any, Any]] = []

    def run(self, feed: Mapping[str, Any], run_options: Any) -> list[Any]:
        self.runs.append((feed, run_options))
        x = feed["x"]
        return [x, x.sum(axis=-1)] if x.ndim else [x]


class RecordedPadded(Recorded):
    """...that pads in its own copy (as BoundRunner with pinned staging)."""

    def __init__(self) -> None:
        super().__init__()
        self.padded: list[tuple[Any, Any, int]] = []

    def run_padded(self, feed: Mapping[str, Any], run_options: Any, size: int) -> list[Any]:
        self.padded.append((feed, run_options, size))
        x = feed["x"]
        grown = np.concatenate([x, np.repeat(x[-1:], size - len(x), axis=0)])
        return [grown, grown.sum(axis=-1)]


def test_the_run_options_reach_the_run_on_every_path() -> None:
    """No rows, exactly the size, padded by the runner, padded here: each run gets the caller's
    options (a timeout, a terminate flag) and, unpadded, the feed as sent."""
    scalar = {"x": np.asarray(1.0, np.float32)}
    inner = Recorded()
    runner = PaddedRunner(inner, Padding(16))
    assert runner.run(scalar, OPTIONS)[0] == 1.0  # no rows: run as sent
    exact = {"x": np.ones((4, 2), np.float32)}
    runner.run(exact, OPTIONS)  # 4 rows: the size becomes 4, run as sent
    runner.run({"x": np.ones((3, 2), np.float32)}, OPTIONS)  # padded here to 4
    assert inner.runs[0][0] is scalar and inner.runs[1][0] is exact
    assert [options is OPTIONS for _, options in inner.runs] == [True] * 3
    assert inner.runs[2][0]["x"].shape == (4, 2)
    own = RecordedPadded()
    PaddedRunner(own, Padding(16)).run({"x": np.ones((3, 2), np.float32)}, OPTIONS)
    assert [(options is OPTIONS, size) for _, options, size in own.padded] == [(True, 4)]


def test_a_one_dimensional_output_is_cut_back_to_the_batchs_rows() -> None:
    """A per-row scalar output (shape (rows,)) ran at the padded size: cut back like the others."""
    runner = PaddedRunner(Recorded(), Padding(16))
    x = np.arange(6, dtype=np.float32).reshape(3, 2)
    rows, sums = runner.run({"x": x}, OPTIONS)
    assert rows.shape == (3, 2) and sums.shape == (3,)
    np.testing.assert_array_equal(sums, [1, 5, 9])


def test_the_padded_size_is_read_through_wrappers() -> None:
    """A fault-injecting wrapper (`inner`, twice here) hides an instance whose runner pads: its
    size and its version's count of changes are still found; an instance that does not pad has none."""
    runner = PaddedRunner(Recorded(), Padding(8))
    instance = SimpleNamespace(io=SimpleNamespace(runner=runner))
    wrapped = SimpleNamespace(inner=SimpleNamespace(inner=instance))
    assert sticky_size(wrapped) is runner.size and sticky_size(instance) is runner.size
    assert shape_changes(wrapped) is runner.size.counted
    plain = SimpleNamespace(inner=SimpleNamespace(io=SimpleNamespace(runner=Recorded())))
    assert sticky_size(plain) is None and shape_changes(plain) is None
