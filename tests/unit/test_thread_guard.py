"""tests/support/thread_guard.py: a thread still running is named; one that ends while it is
joined, or that was running before, is not."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

from tests.support.thread_guard import describe, threads_left


def _blocked_until(event: threading.Event, name: str, daemon: bool = True) -> threading.Thread:
    thread = threading.Thread(target=event.wait, name=name, daemon=daemon)
    thread.start()
    return thread


def test_a_thread_still_running_is_left_and_named() -> None:
    before = set(threading.enumerate())
    stop = threading.Event()
    thread = _blocked_until(stop, "held-open")
    try:
        left = threads_left(before, join_s=0.05)
        assert left == [thread]
        assert describe(left) == "held-open (Event.wait, daemon)"
    finally:
        stop.set()
        thread.join()


def test_a_thread_that_ends_while_joined_is_not_left() -> None:
    before = set(threading.enumerate())
    release = threading.Event()
    # Ends on its own once the join has begun: the timer sets the event the thread waits on.
    thread = _blocked_until(release, "ending", daemon=False)
    timer = threading.Timer(0.05, release.set)
    timer.start()
    assert threads_left(before, join_s=30.0) == []
    assert not thread.is_alive() and not timer.is_alive()


def test_an_executor_that_becomes_garbage_when_its_last_item_ends_is_not_left() -> None:
    """Its worker holds the executor (through the item) until the item is done; only then is the
    executor garbage, in a cycle that only the collector frees, and its worker ends."""
    before = set(threading.enumerate())
    release = threading.Event()
    cycle: dict[str, object] = {}
    cycle["self"] = cycle
    cycle["pool"] = pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="owned")
    pool.submit(lambda held=cycle: (release.wait(), held))
    del pool, cycle
    timer = threading.Timer(0.05, release.set)
    timer.start()
    assert threads_left(before, join_s=30.0) == []


def test_threads_running_before_are_not_counted() -> None:
    stop = threading.Event()
    earlier = _blocked_until(stop, "earlier")
    try:
        assert threads_left(set(threading.enumerate()), join_s=0.05) == []
    finally:
        stop.set()
        earlier.join()


def test_a_thread_without_a_target_is_described_as_such() -> None:
    thread = threading.Thread(name="bare")
    assert describe([thread]) == "bare (no target)"


class _Poller:
    """Stands in for grpc.aio's PollerCompletionQueue: its poller thread is grpc's to end."""

    def __init__(self, stop: threading.Event) -> None:
        self.stop = stop

    def _poll_wrapper(self) -> None:
        self.stop.wait()


def test_grpcs_poller_thread_is_not_counted_but_another_of_that_name_is() -> None:
    before = set(threading.enumerate())
    stop = threading.Event()
    grpcs, other = _Poller(stop), _Poller(stop)
    type(grpcs).__module__ = "grpc._cython.cygrpc"
    try:
        poller = threading.Thread(target=grpcs._poll_wrapper, daemon=True)
        poller.start()
        assert threads_left(before, join_s=0.05) == []
    finally:
        type(grpcs).__module__ = __name__
    lookalike = threading.Thread(target=other._poll_wrapper, daemon=True)
    lookalike.start()
    try:
        assert threads_left(before | {poller}, join_s=0.05) == [lookalike]
    finally:
        stop.set()
        poller.join()
        lookalike.join()
