"""Threads a group of tests started and left running.

A unit test that leaves a thread running (a fake host's accept loop, a session's worker) lets it
run on into later tests and into the interpreter's exit. Under mutmut, such threads were still
executing Python through its trampolines while the interpreter shut down, and its stats pass died
with a segmentation fault (tests/MUTANTS.md, "forty-fifth session"). tests/unit/conftest.py checks
each unit test file with `threads_left`.
"""

from __future__ import annotations

import gc
import threading
import time
from collections.abc import Collection, Iterable
from concurrent.futures import ThreadPoolExecutor

# A thread that is ending (a timer just cancelled, a loop that saw its stop flag) gets this long, in
# all, to finish before it counts as left running: ample on a loaded 2-core machine, and only spent
# when a thread is still alive after its tests.
JOIN_S = 10.0
# Joining goes in rounds this long, with garbage collected between them.
ROUND_S = 0.1


def threads_left(before: Collection[threading.Thread], join_s: float = JOIN_S) -> list[threading.Thread]:
    """The threads alive now that were not in `before` and are still alive after being joined for
    `join_s` seconds in all. Garbage is collected before each round of joining: a thread owned by an
    object no longer referenced (an executor's idle worker, grpc.aio's poller while a channel lives)
    ends with it, and an executor whose worker is still running its last item (which may hold the
    executor) only becomes garbage once the item is done."""
    started = [thread for thread in threading.enumerate() if thread not in before and not _grpcs(thread)]
    deadline = time.monotonic() + join_s
    while True:
        gc.collect()
        alive = [thread for thread in started if thread.is_alive()]
        remaining = deadline - time.monotonic()
        if not alive or remaining <= 0:
            return alive
        alive[0].join(timeout=min(ROUND_S, remaining))


def _grpcs(thread: threading.Thread) -> bool:
    """grpc.aio's completion-queue poller: grpc starts it with the process's first grpc.aio object and
    ends it when the last one is gone, so its life is grpc's, not a test's (a channel another file
    left to the collector kept it past this file's end in a CI run); it runs grpc's own code."""
    target = getattr(thread, "_target", None)
    owner = getattr(target, "__self__", None)
    return getattr(target, "__name__", "") == "_poll_wrapper" and type(owner).__module__.startswith("grpc.")


def describe(threads: list[threading.Thread]) -> str:
    """One line naming each thread and what it runs, for the failure's message."""
    return ", ".join(
        f"{thread.name} ({getattr(getattr(thread, '_target', None), '__qualname__', 'no target')}"
        f"{', daemon' if thread.daemon else ''})"
        for thread in threads
    )


def shut_down_pools(backends: Iterable[object]) -> None:
    """Shuts down the executors (a `pool` attribute) of the test backends a test used, so that their
    workers end with it: an idle worker of one still referenced (from a cycle the collector has not
    freed, or a task left in a closed loop) outlived its file (tests/unit/conftest.py)."""
    for backend in backends:
        pool = getattr(backend, "pool", None)
        if isinstance(pool, ThreadPoolExecutor):
            pool.shutdown(wait=True)
