"""Stream readers wait a tick while the event loop lags and new calls wait, so those get turns.

grpc.aio's server accepts one new call per turn or two of the event loop, and a unary call needs
several turns more (its handler, the batcher's hand-off, the write). Streams that keep the loop
full make every turn long: new calls, unary or new streams, then wait while open streams keep
their rate (RELIABILITY.md, "new calls wait while streams saturate the server").

A sampler measures how late a short timer fires. While it fires later than `lag_limit_s` and
`waiting()` says calls wait for a handler (grpc core's counts, app.py), a stream reader waits for
the sampler's next tick before it reads its next frame. Fewer frames read per turn make shorter
turns. Frames already read are computed and answered as before. Every held reader goes on at the
next tick, so a stream still reads a frame a tick however long the lag lasts. With no call
waiting (streams alone) nothing is held. The sampler runs only while streams read: every tick
from the first held read until a second has passed without one, else every 50 ms.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator, Mapping

PACED = "sluiceway_stream_reads_paced_total"
METRICS = {
    PACED: (
        "counter",
        "Stream frames whose read waited a tick (stream_pace_tick_ms) because the event loop ran "
        "late (stream_pace_lag_ms) while new calls waited for a handler",
    ),
}
IDLE_STOP_S = 1.0  # the sampler stops after this long without a stream read
# Once nothing has been held for CALM_AFTER_S the sampler looks only every CALM_LOOK_S (a late
# timer is as late at any period): 20 wakeups a second while streams read calmly, not 200. Not
# sooner: a pace that slowed its look after each on-time tick let lag build for 50 ms at a time,
# and unary calls beside saturating streams gained 1.32x instead of 3.32x (RELIABILITY.md).
CALM_AFTER_S = 1.0
CALM_LOOK_S = 0.05
WAITING_LOOK_S = 0.05  # `waiting()` (a channelz read, ~0.1 ms) is asked at most this often


class LoopPace:
    """One per server; `hold()` is awaited by a stream reader before it reads a frame."""

    def __init__(self, lag_limit_s: float, tick_s: float, waiting: Callable[[], bool] = lambda: True) -> None:
        self._lag_limit_s = lag_limit_s  # 0: off
        self._tick_s = tick_s
        self._waiting = waiting
        self._holding = False
        self._tick: asyncio.Future[None] | None = None  # done at the sampler's next sample
        self._sampler: asyncio.Task[None] | None = None
        self._last_read = 0.0
        self._last_held = float("-inf")  # the last sample that held reads
        self._looked_at = -WAITING_LOOK_S
        self._calls_wait = False
        self.held = 0  # reads that waited a tick
        self.holding_ticks = 0  # ticks during which reads were held

    async def hold(self) -> None:
        """Return at once unless reads are held; then after the sampler's next tick."""
        if self._lag_limit_s <= 0:
            return
        loop = asyncio.get_running_loop()
        self._last_read = loop.time()
        if self._sampler is None:
            self._sampler = loop.create_task(self._sample())
        if not self._holding:
            return
        if self._tick is None:
            self._tick = loop.create_future()
        self.held += 1
        await asyncio.shield(self._tick)  # a reader cancelled here leaves the tick to the others

    def lag_sample(self, late_s: float, now: float) -> None:
        """One sample: the timer fired `late_s` after it was due. Releases the held readers."""
        self._holding = late_s > self._lag_limit_s and self._calls_waiting(now)
        if self._holding:
            self.holding_ticks += 1
            self._last_held = now
        tick, self._tick = self._tick, None
        if tick is not None and not tick.done():
            tick.set_result(None)

    def period(self, now: float) -> float:
        """How long the sampler sleeps next: a tick while reads were held in the last CALM_AFTER_S."""
        calm = now - self._last_held >= CALM_AFTER_S
        return max(self._tick_s, CALM_LOOK_S) if calm else self._tick_s

    def _calls_waiting(self, now: float) -> bool:
        if now - self._looked_at >= WAITING_LOOK_S:
            self._looked_at = now
            self._calls_wait = self._waiting()
        return self._calls_wait

    async def _sample(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while loop.time() - self._last_read < IDLE_STOP_S:
                period = self.period(loop.time())
                due = loop.time() + period
                await asyncio.sleep(period)
                now = loop.time()
                self.lag_sample(now - due, now)
        finally:
            self._sampler = None
            self.lag_sample(0.0, loop.time())  # nobody is left waiting for a tick that will not come

    def gauge_values(self) -> Iterator[tuple[str, Mapping[str, str], float]]:
        """The count for /metrics (a gauge source: server/observability/metrics.py)."""
        yield PACED, {}, float(self.held)

    def close(self) -> None:
        """Off for good (the server stops): the sampler ends and releases any held reader; one
        made but not yet started never runs its `finally`, so it is let go here too."""
        self._lag_limit_s = 0.0
        if self._sampler is not None:
            self._sampler.cancel()
            self._sampler = None
