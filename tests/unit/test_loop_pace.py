"""LoopPace: a stream read waits one tick while the loop lags and new calls wait, never longer,
and never while nothing waits. Samples are given by hand (`lag_sample`); the sampler's own tick
is set to an hour so it takes no part, except in the test of its idle stop."""

from __future__ import annotations

import asyncio
import itertools

import pytest

from server.protocol import loop_pace
from server.protocol.loop_pace import PACED, LoopPace
from tests.unit.test_batcher_delay_slack import VirtualTime, run_virtual

HOUR = 3600.0
LAG_S = 0.002


class Waiting:
    """A `waiting()` answer set by the test; counts how often it was asked."""

    def __init__(self, answer: bool) -> None:
        self.answer = answer
        self.asked = 0

    def __call__(self) -> bool:
        self.asked += 1
        return self.answer


async def until_waiting(task: asyncio.Task[None]) -> None:
    """Let `task` run until it awaits (a few turns of the loop, no timer)."""
    for _ in range(5):
        await asyncio.sleep(0)
    assert not task.done()


def test_reads_are_not_held_while_the_loop_keeps_time() -> None:
    async def main() -> None:
        pace = LoopPace(LAG_S, HOUR, Waiting(True))
        pace.lag_sample(LAG_S / 2, 0.0)
        await asyncio.wait_for(pace.hold(), 1)
        assert pace.held == 0 and pace.holding_ticks == 0
        pace.close()

    asyncio.run(main())


def test_a_read_waits_for_the_next_tick_while_the_loop_lags_and_calls_wait() -> None:
    async def main() -> None:
        pace = LoopPace(LAG_S, HOUR, Waiting(True))
        await pace.hold()  # starts the sampler
        pace.lag_sample(0.010, 1.0)
        readers = [asyncio.create_task(pace.hold()) for _ in range(3)]
        for reader in readers:
            await until_waiting(reader)
        pace.lag_sample(0.010, 1.01)  # still lagging: the tick releases them all the same
        await asyncio.wait_for(asyncio.gather(*readers), 1)
        assert pace.held == 3 and pace.holding_ticks == 2
        assert list(pace.gauge_values()) == [(PACED, {}, 3.0)]
        pace.close()

    asyncio.run(main())


def test_nothing_is_held_when_no_call_waits_for_a_handler() -> None:
    async def main() -> None:
        waiting = Waiting(False)
        pace = LoopPace(LAG_S, HOUR, waiting)
        pace.lag_sample(0.5, 1.0)
        await asyncio.wait_for(pace.hold(), 1)
        assert pace.held == 0 and waiting.asked == 1
        pace.close()

    asyncio.run(main())


def test_waiting_is_asked_at_most_once_per_look_interval() -> None:
    waiting = Waiting(True)
    pace = LoopPace(LAG_S, HOUR, waiting)
    look = loop_pace.WAITING_LOOK_S
    for i in range(10):  # ten lagging samples within one look interval
        pace.lag_sample(0.010, 1.0 + i * look / 20)
    assert waiting.asked == 1
    waiting.answer = False
    pace.lag_sample(0.010, 1.0 + look)
    assert waiting.asked == 2 and pace.holding_ticks == 10
    pace.lag_sample(0.0, 1.0 + 2 * look)  # on time: not even asked
    assert waiting.asked == 2


def test_off_when_the_lag_limit_is_zero() -> None:
    async def main() -> None:
        waiting = Waiting(True)
        pace = LoopPace(0.0, HOUR, waiting)
        await pace.hold()
        assert pace._sampler is None and waiting.asked == 0

    asyncio.run(main())


def test_a_cancelled_reader_leaves_the_tick_to_the_others() -> None:
    async def main() -> None:
        pace = LoopPace(LAG_S, HOUR, Waiting(True))
        await pace.hold()
        pace.lag_sample(0.010, 1.0)
        first, second = asyncio.create_task(pace.hold()), asyncio.create_task(pace.hold())
        await until_waiting(first)
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        pace.lag_sample(0.0, 1.01)
        await asyncio.wait_for(second, 1)
        pace.close()

    asyncio.run(main())


def test_the_sampler_stops_without_reads_and_releases_what_it_held(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(loop_pace, "IDLE_STOP_S", 0.05)

    async def main() -> None:
        pace = LoopPace(LAG_S, 0.01, Waiting(True))
        await pace.hold()
        sampler = pace._sampler
        assert sampler is not None
        await asyncio.wait_for(sampler, 5)  # ends on its own once no read came for IDLE_STOP_S
        assert pace._sampler is None
        pace.lag_sample(0.010, 10.0)  # a lag seen last, then no sampler: a read must not wait forever
        reader = asyncio.create_task(pace.hold())  # starts a new sampler, which ticks it free
        await asyncio.wait_for(reader, 5)
        pace.close()

    asyncio.run(main())


def test_the_sampler_looks_every_tick_while_reads_were_held_in_the_last_second_else_calmly() -> None:
    tick = 0.005
    pace = LoopPace(LAG_S, tick, Waiting(True))
    assert pace.period(0.0) == loop_pace.CALM_LOOK_S  # nothing held yet
    pace.lag_sample(0.010, 1.0)  # held
    pace.lag_sample(0.0, 1.005)  # on time again: still every tick, lag comes back within 50 ms
    assert pace.period(1.005) == tick
    assert pace.period(1.0 + loop_pace.CALM_AFTER_S * 0.99) == tick
    assert pace.period(1.0 + loop_pace.CALM_AFTER_S) == loop_pace.CALM_LOOK_S


# --- the sampler on a loop whose time the test controls (tests/unit/test_batcher_delay_slack.py) ---


class Recorded(LoopPace):
    """A LoopPace that records every sample the sampler gives it: (late_s, now)."""

    def __init__(self, lag_limit_s: float, tick_s: float, waiting: Waiting) -> None:
        super().__init__(lag_limit_s, tick_s, waiting)
        self.samples: list[tuple[float, float]] = []

    def lag_sample(self, late_s: float, now: float) -> None:
        self.samples.append((late_s, now))
        super().lag_sample(late_s, now)


def run_sampler(pace: LoopPace, clock: VirtualTime) -> None:
    """One read at the clock's start, then the sampler until it stops on its own."""

    async def main() -> None:
        await pace.hold()
        sampler = pace._sampler
        assert sampler is not None
        await sampler
        assert pace._sampler is None

    run_virtual(clock, main())


@pytest.fixture
def binary_periods(monkeypatch: pytest.MonkeyPatch) -> None:
    """Periods that add up exactly in floating point (1/16 s calm, the idle stop at 1 s)."""
    monkeypatch.setattr(loop_pace, "CALM_LOOK_S", 1 / 16)
    monkeypatch.setattr(loop_pace, "IDLE_STOP_S", 1.0)


@pytest.mark.usefixtures("binary_periods")
def test_an_on_time_sampler_looks_calmly_until_a_second_without_reads_then_stops() -> None:
    clock = VirtualTime()
    start = clock.now
    pace = Recorded(LAG_S, 1 / 128, Waiting(True))
    run_sampler(pace, clock)
    calm = [(0.0, start + k / 16) for k in range(1, 17)]  # every 1/16 s up to 1 s after the read
    assert pace.samples == [*calm, (0.0, start + 1.0)]  # the last: the sampler's release at its stop
    assert pace.holding_ticks == 0 and pace.held == 0


@pytest.mark.usefixtures("binary_periods")
def test_a_late_loop_is_measured_and_then_looked_at_every_tick() -> None:
    late, tick = 1 / 64, 1 / 128
    clock = VirtualTime(late_s=late)
    start = clock.now
    waiting = Waiting(True)
    pace = Recorded(LAG_S, tick, waiting)
    run_sampler(pace, clock)
    *ticks, last = pace.samples
    assert all(late_s == late for late_s, _ in ticks)  # how late each timer fired, exactly
    times = [start] + [now for _, now in ticks]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert gaps[0] == 1 / 16 + late  # calm before the first lag
    assert set(gaps[1:]) == {tick + late}  # then every tick while reads were held
    assert times[-2] - start < 1.0 <= times[-1] - start
    assert pace.holding_ticks == len(ticks)
    assert last[0] == 0.0 and not pace._holding  # stopped: nothing left held


def test_a_lag_of_exactly_the_limit_holds_nothing() -> None:
    pace = LoopPace(LAG_S, HOUR, Waiting(True))
    pace.lag_sample(LAG_S, 1.0)
    assert pace.holding_ticks == 0
    pace.lag_sample(LAG_S * 1.5, 2.0)
    assert pace.holding_ticks == 1


def test_calls_are_taken_as_waiting_unless_the_server_says_otherwise() -> None:
    pace = LoopPace(LAG_S, HOUR)  # no `waiting`: a lag alone holds reads
    pace.lag_sample(0.010, 1.0)
    assert pace.holding_ticks == 1


def test_the_first_lag_on_a_fresh_loop_asks_whether_calls_wait() -> None:
    # The loop's clock may start at 0: the first look is due at once, not WAITING_LOOK_S later.
    waiting = Waiting(True)
    pace = LoopPace(LAG_S, HOUR, waiting)
    pace.lag_sample(0.010, 0.0)
    assert waiting.asked == 1 and pace.holding_ticks == 1


def test_close_stops_the_sampler() -> None:
    async def main() -> None:
        pace = LoopPace(LAG_S, HOUR, Waiting(True))
        await pace.hold()
        sampler = pace._sampler
        assert sampler is not None
        await asyncio.sleep(0)  # the sampler waits for its first tick
        pace.close()
        with pytest.raises(asyncio.CancelledError):
            await sampler
        assert pace._sampler is None
        pace.close()  # again, with no sampler: nothing to do

    asyncio.run(main())


def test_a_pace_closed_before_its_sampler_started_holds_nothing_and_starts_no_other() -> None:
    async def main() -> None:
        pace = LoopPace(LAG_S, HOUR, Waiting(True))
        await pace.hold()  # makes the sampler; it has not run yet
        sampler = pace._sampler
        pace.close()
        assert pace._sampler is None and sampler is not None
        await pace.hold()  # closed: returns at once and makes no sampler
        assert pace._sampler is None and pace.held == 0
        await asyncio.sleep(0)
        assert sampler.done()

    asyncio.run(main())
