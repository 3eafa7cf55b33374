"""Pinned staging buffers (server/backends/pinned.py) over a fake CUDA runtime whose pinned memory
is host memory: layout, copies, reuse, the bound on buffers and bytes, and freeing."""

from __future__ import annotations

import ctypes
import gc

import numpy as np

from batcher.types import Array
from server.backends.cudart import CudaRuntime
from server.backends.pinned import ALIGN, PinnedStaging, layout
from tests.support.fake_cudart import FakeCudart


def read(pointer: int, like: np.ndarray) -> np.ndarray:
    return np.frombuffer(ctypes.string_at(pointer, like.nbytes), dtype=like.dtype).reshape(like.shape)


def test_inputs_lie_back_to_back_aligned() -> None:
    arrays: dict[str, Array] = {"a": np.zeros(3, np.uint8), "b": np.zeros(300, np.float32)}
    arrays["c"] = np.zeros(0, np.int64)
    offsets, total = layout(arrays)
    assert offsets == {"a": 0, "b": ALIGN, "c": ALIGN + 1280}
    assert total == ALIGN + 1280


def test_a_batch_is_copied_in_c_order_and_the_buffer_reused() -> None:
    lib = FakeCudart()
    staging = PinnedStaging(CudaRuntime(lib), max_buffers=2)
    image = np.arange(24, dtype=np.float32).reshape(2, 3, 4).transpose(0, 2, 1)  # not contiguous
    ids = np.asarray([[7, 8]], np.int64)
    with staging.stage({"image": image, "ids": ids}) as pointers:
        assert pointers is not None and all(p % ALIGN == 0 for p in pointers.values())
        np.testing.assert_array_equal(read(pointers["image"], image), image)
        np.testing.assert_array_equal(read(pointers["ids"], ids), ids)
        first = pointers["image"]
    with staging.stage({"image": image}) as again:
        assert again is not None and again["image"] == first  # the same buffer, given back
    assert len(lib.pinned) == 1


def test_buffers_are_bounded_in_number_and_size() -> None:
    lib = FakeCudart()
    staging = PinnedStaging(CudaRuntime(lib), max_buffers=1, max_bytes=4096)
    small = {"x": np.ones(16, np.float32)}
    with staging.stage(small) as held:
        assert held is not None
        with staging.stage(small) as busy:
            assert busy is None  # every buffer in use: bound unstaged
    with staging.stage({"x": np.ones(4097, np.uint8)}) as large:
        assert large is None  # over max_bytes: bound unstaged
    assert len(lib.pinned) == 1


def test_a_larger_batch_replaces_a_free_buffer_and_everything_is_freed_with_the_instance() -> None:
    lib = FakeCudart()
    staging = PinnedStaging(CudaRuntime(lib), max_buffers=1, max_bytes=8 << 20)
    with staging.stage({"x": np.ones(10, np.uint8)}):
        pass
    with staging.stage({"x": np.ones(3 << 20, np.uint8)}) as pointers:
        assert pointers is not None
    assert list(lib.pinned.values()) == [3 << 20]  # the 1 MiB one freed, a 3 MiB one in its place
    del staging
    gc.collect()
    assert lib.pinned == {}


def test_no_pinned_memory_left_means_unstaged_not_failed() -> None:
    lib = FakeCudart()
    lib.fail_allocs = True
    staging = PinnedStaging(CudaRuntime(lib), max_buffers=2)
    with staging.stage({"x": np.ones(8, np.float32)}) as pointers:
        assert pointers is None
    lib.fail_allocs = False
    with staging.stage({"x": np.ones(8, np.float32)}) as pointers:
        assert pointers is not None
