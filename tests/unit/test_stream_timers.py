"""A stream frame's client-side timer (clients/stream_results.py `expire_later`) holds its session
weakly: a timer left armed (one for every frame answered while its write ran, never cancelled) had
kept closed sessions and their unreceived answers alive until its time (a tester: ~150 sessions,
230 MB where 81 MB now)."""

from __future__ import annotations

import asyncio
import gc
import weakref

from clients.stream_results import expire_later


class Session:
    def __init__(self) -> None:
        self.expired: list[str] = []
        self.answers = bytearray(1 << 20)  # what a closed session's unreceived answers hold
        self.fired = asyncio.Event()

    def expire(self, rid: str) -> None:
        self.expired.append(rid)
        self.fired.set()


async def test_a_cancelled_timer_does_not_keep_its_session() -> None:
    session = Session()
    gone = weakref.ref(session)
    handle = expire_later(3600.0, session.expire, "a")
    handle.cancel()  # answered: cancelled, but in the loop's heap for the hour
    del session
    gc.collect()
    assert gone() is None


async def test_a_timer_fires_for_a_live_session() -> None:
    session = Session()
    expire_later(0.0, session.expire, "b")
    await asyncio.wait_for(session.fired.wait(), 5.0)
    assert session.expired == ["b"]
