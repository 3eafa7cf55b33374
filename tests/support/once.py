"""Checks that exercise a script or the package index rather than the Python running them run once
per test command, not on each of its Pythons: scripts/test.sh names, in SLUICEWAY_TEST_ONCE
(comma-separated), the ones each Python's run takes. Unset (pytest run by hand), a run takes them all.
"""

from __future__ import annotations

import os

import pytest

ENV = "SLUICEWAY_TEST_ONCE"
# The names scripts/test.sh hands out: the dry GPU check (tests/integration/test_gpu_check.py) and
# pip's resolution of the runtime extras (tests/integration/test_extras_resolve.py).
GPU_DRY_RUN = "gpu-dry-run"
EXTRAS_RESOLVE = "extras-resolve"
# The load-test harness's runs against real servers (tests/integration/test_loadtest.py and
# test_loadtest_claims.py, the serial phase's longest files, ~78 s a Python): they check what the
# harness measures and reports, the same on every Python; its unit tests run on each.
LOADTEST_RUNS = "loadtest-runs"


def once_per_command(name: str) -> pytest.MarkDecorator:
    """Skip unless this run takes the check `name` (always taken when SLUICEWAY_TEST_ONCE is unset)."""
    chosen = os.environ.get(ENV)
    taken = chosen is None or name in {part.strip() for part in chosen.split(",")}
    return pytest.mark.skipif(
        not taken, reason=f"{name} runs once per test command, on another Python ({ENV}={chosen})"
    )
