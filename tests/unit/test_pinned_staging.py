"""Pinned staging buffers (server/backends/pinned.py) over a fake CUDA runtime whose pinned memory
is host memory: layout, copies, reuse, the bound on buffers and bytes, and freeing."""

from __future__ import annotations

import ctypes
import gc

import numpy as np
import pytest

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


def test_a_batch_staged_with_padding_repeats_its_last_row() -> None:
    """Padding written into the pinned copy (batch_padding.py's size), not into a padded array first."""
    lib = FakeCudart()
    staging = PinnedStaging(CudaRuntime(lib), max_buffers=1)
    x = np.arange(6, dtype=np.float32).reshape(3, 2)
    ids = np.asarray([[1], [2], [3]], np.int64)
    assert layout({"x": x, "ids": ids}, pad_to=8) == ({"x": 0, "ids": ALIGN}, 2 * ALIGN)
    with staging.stage({"x": x, "ids": ids}, pad_to=5) as pointers:
        assert pointers is not None
        np.testing.assert_array_equal(read(pointers["x"], np.zeros((5, 2), np.float32)), [*x, x[2], x[2]])
        np.testing.assert_array_equal(
            read(pointers["ids"], np.zeros((5, 1), np.int64)), [[1], [2], [3], [3], [3]]
        )


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


def test_the_cost_script_runs_both_forms(capsys: pytest.CaptureFixture[str]) -> None:
    from loadtest import pad_staging_cost

    assert pad_staging_cost.main(["--rows", "2", "--size", "4", "--repeat", "1"]) == 0
    said = capsys.readouterr().out
    assert "gather, pad, stage" in said and "gathered in staging" in said
    with pytest.raises(SystemExit):
        pad_staging_cost.main(["--rows", "5", "--size", "4"])
