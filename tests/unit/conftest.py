"""Every unit test file ends the threads it starts (tests/support/thread_guard.py says why)."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from tests.support.thread_guard import describe, threads_left


@pytest.fixture(autouse=True, scope="module")
def threads_end_with_their_file() -> Iterator[None]:
    """Fails the file's last test (at teardown) when a thread it started is still running after the
    file's own fixtures are torn down. Module scope: a file's module fixtures may keep a thread
    across its tests; this fixture is set up before them and torn down after them."""
    before = set(threading.enumerate())
    yield
    left = threads_left(before)
    if left:
        pytest.fail(f"threads started by this file are still running after it: {describe(left)}")
