"""glibc malloc's arenas, bounded when the server starts (`malloc_arena_max`).

glibc gives each thread that allocates under contention an arena of its own, up to 8 a core, and
an arena keeps the pages it has held. Batches are built and answers encoded on executor, gRPC and
onnxruntime threads, so under churn the process's RSS climbed cycle after cycle while Python's own
heap did not (a tester: 116 -> 304 MiB over 15 cycles of cancelled calls, deadlines and killed
clients, never given back idle; +0.12 MiB a cycle with MALLOC_ARENA_MAX=2). mallopt(M_ARENA_MAX)
applies to arenas made after it, so it is called before the server starts any thread; the
MALLOC_ARENA_MAX variable, when set, is glibc's own and wins.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

M_ARENA_MAX = -8  # glibc's mallopt parameter number


def bound_malloc_arenas(count: int) -> bool:
    """Bound glibc's arenas at `count` (0: leave glibc's default); whether it was applied (False
    where MALLOC_ARENA_MAX is set, or the C library is not glibc)."""
    if count <= 0 or "MALLOC_ARENA_MAX" in os.environ:
        return False
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return bool(mallopt(M_ARENA_MAX, count))
