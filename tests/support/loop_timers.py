"""Reading a queue timer's delay in unit tests without timing the test itself.

A timer armed with `loop.call_later(delay)` fires at the loop's time when it was armed plus
`delay`. Subtracting the loop's time read *after* arming, as these tests did, counted the time the
test took in between: under a loaded machine (load average 8) a 1 ms tolerance failed. The loop's
time read just *before* arming bounds the delay from the other side.
"""

from __future__ import annotations

import asyncio

from batcher.queue import Request


def loop_now() -> float:
    """The running loop's time: read it just before the call that arms the timer."""
    return asyncio.get_running_loop().time()


def armed_delay(p: Request, before: float) -> tuple[float, float]:
    """(least, most) delay `p`'s timer can have been armed with, given `before`, the loop's time
    read just before it was armed."""
    assert p.handle.timer is not None
    when = p.handle.timer.when()
    return when - loop_now(), when - before


def armed_about(p: Request, before: float, delay: float, tolerance: float = 1e-3) -> bool:
    """Whether `p`'s timer was armed with `delay` (within `tolerance`)."""
    least, most = armed_delay(p, before)
    return least - tolerance <= delay <= most + tolerance
