"""The test command's two Pythons share the integration tests instead of each running them all:
scripts/test.sh gives each Python's run a share, `SLUICEWAY_TEST_SHARE=i/n`, and that run keeps
the unit tests, the files in BOTH_PYTHONS and the other test files whose share is i. Unset (pytest
by hand, `SLUICEWAY_TEST_FULL=1 bash scripts/test.sh`), a run keeps every test.

Why: both Pythons running everything took the command to 965-1,059 s on 2 cores, over the ~10
minutes it is held to. What differs between the two Pythons is mostly their onnxruntime (1.23.2 on
3.10, 1.31.1 on newer) and numpy, so the files that test onnxruntime's and numpy's own behaviour
run on both; the rest (the protocol, the batcher, streams, control, the clients) is the same code
over the same grpcio and protobuf on both, and runs once.
"""

from __future__ import annotations

import os
import zlib

import pytest

ENV = "SLUICEWAY_TEST_SHARE"
# Files whose outcome depends on the onnxruntime or numpy version: the integer-division guard
# (onnxruntime 1.23 traps a zero divisor where 1.31 does not), users' own models and their shapes,
# quantization and conversion, bfloat16, IO binding, onnxruntime's load and run errors, the VAD
# model; and the checks tests/support/once.py hands to one Python, which must be collected on both.
BOTH_PYTHONS = frozenset(
    {
        "tests/integration/test_int_division_by_zero.py",
        "tests/integration/test_int_division_gaps.py",
        "tests/integration/test_int_division_traps.py",
        "tests/integration/test_zoo_models.py",
        "tests/integration/test_zoo_batch_dims.py",
        "tests/integration/test_optimize.py",
        "tests/integration/test_optimize_minilm.py",
        "tests/integration/test_bf16.py",
        "tests/triton/test_bf16.py",
        "tests/integration/test_io_binding_served.py",
        "tests/integration/test_run_errors.py",
        "tests/integration/test_load_errors.py",
        "tests/integration/test_vad.py",
        "tests/integration/test_gpu.py",
        "tests/integration/test_extras_resolve.py",
        "tests/integration/test_gpu_check.py",
        "tests/integration/test_loadtest.py",
        "tests/integration/test_loadtest_claims.py",
    }
)


def parse_share(value: str) -> tuple[int, int]:
    """`i/n` (0 <= i < n) as (i, n); a ValueError naming the variable otherwise."""
    index, sep, count = value.partition("/")
    try:
        i, n = int(index), int(count)
    except ValueError:
        i, n = -1, 0
    if not sep or not 0 <= i < n:
        raise ValueError(f"{ENV} must be i/n with 0 <= i < n, not {value!r}")
    return i, n


def share_of(path: str, count: int) -> int:
    """The share a test file belongs to: stable for a path (crc32), whatever else changes."""
    return zlib.crc32(path.encode()) % count


def kept(path: str, share: tuple[int, int]) -> bool:
    """Whether the run with `share` runs the tests of the file at `path` (relative to the root)."""
    index, count = share
    return path.startswith("tests/unit/") or path in BOTH_PYTHONS or share_of(path, count) == index


def deselect_other_shares(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Drop, as deselected, the tests of files that another Python's run takes."""
    value = os.environ.get(ENV)
    if not value:
        return
    share = parse_share(value)
    keep = [item for item in items if kept(item.nodeid.split("::", 1)[0], share)]
    if len(keep) < len(items):
        dropped = [item for item in items if not kept(item.nodeid.split("::", 1)[0], share)]
        config.hook.pytest_deselected(items=dropped)
        items[:] = keep
