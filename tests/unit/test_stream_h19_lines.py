"""The stream-end lines' ration flushes its summary on its own (UnsentLines), with a fake clock
and a fake timer: the stream ends not logged during a flood had waited for the next stream end's
line, for good when none came, and were lost at the server's stop."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import pytest

from batcher.stats import ModelStats
from server.protocol.stream_unsent import Unsent, UnsentLines

PEER = "ipv4:127.0.0.1:1"


class FakeTimers:
    """`call_later` on a fake clock: `advance` runs the callbacks that are due."""

    def __init__(self) -> None:
        self.now = 0.0
        self.armed: list[FakeTimer] = []

    def schedule(self, delay_s: float, callback: Callable[[], None]) -> FakeTimer:
        timer = FakeTimer(self.now + delay_s, callback)
        self.armed.append(timer)
        return timer

    def advance(self, to: float) -> None:
        self.now = to
        while due := [t for t in self.armed if t.due <= to and not t.cancelled]:
            for timer in due:
                self.armed.remove(timer)
                timer.callback()

    def live(self) -> int:
        return sum(not t.cancelled for t in self.armed)


class FakeTimer:
    def __init__(self, due: float, callback: Callable[[], None]) -> None:
        self.due = due
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


def stream_end(lines: UnsentLines, answers: int = 2) -> None:
    ledger = Unsent()
    ledger.ended("cancelled")
    for _ in range(answers):
        ledger.drop(ModelStats(), success=True)
    lines.report(ledger, PEER, None, 2.0)


def messages(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "server.protocol.stream_unsent"]


@pytest.fixture()
def timers() -> FakeTimers:
    return FakeTimers()


def rationed(timers: FakeTimers) -> UnsentLines:
    return UnsentLines(burst=3, every_s=10.0, clock=lambda: timers.now, schedule=timers.schedule)


def test_the_summary_of_a_flood_is_logged_once_the_ration_allows_without_another_stream_end(
    timers: FakeTimers, caplog: pytest.LogCaptureFixture
) -> None:
    lines = rationed(timers)
    with caplog.at_level(logging.WARNING, "server.protocol.stream_unsent"):
        for _ in range(5):
            stream_end(lines)
        assert len(messages(caplog)) == 3  # the burst; two summed
        timers.advance(9.9)  # not yet a line's worth
        assert len(messages(caplog)) == 3
        timers.advance(10.0)
    logged = messages(caplog)
    assert len(logged) == 4, logged
    assert logged[-1].startswith("2 more streams ended with 4 answers not written since the last line")
    assert "more than 3 lines at once, then one per 10 s" in logged[-1]
    assert timers.live() == 0
    with caplog.at_level(logging.WARNING, "server.protocol.stream_unsent"):
        timers.advance(100.0)  # nothing more waits
        stream_end(lines)  # a later stream end's line carries no old summary
    assert len(messages(caplog)) == 5
    assert "more streams" not in messages(caplog)[-1]


def test_a_stream_end_line_within_the_window_takes_the_summary_and_the_timer_logs_nothing(
    timers: FakeTimers, caplog: pytest.LogCaptureFixture
) -> None:
    now = [0.0]
    lines = UnsentLines(burst=1, every_s=10.0, clock=lambda: now[0], schedule=timers.schedule)
    with caplog.at_level(logging.WARNING, "server.protocol.stream_unsent"):
        stream_end(lines)
        stream_end(lines, answers=3)  # summed; the timer is due at 10 s of the fake loop
        now[0] = 10.0  # the ration's clock gets there before the loop's timer fires
        stream_end(lines)
        timers.advance(10.0)
    logged = messages(caplog)
    assert len(logged) == 2, logged
    assert "(and 1 more streams ended with 3 answers not written since the last line" in logged[1]


def test_the_servers_stop_logs_the_summary_waiting_and_disarms_the_timer(
    timers: FakeTimers, caplog: pytest.LogCaptureFixture
) -> None:
    lines = rationed(timers)
    with caplog.at_level(logging.WARNING, "server.protocol.stream_unsent"):
        for _ in range(7):
            stream_end(lines)
        lines.close()
        assert timers.live() == 0
        timers.advance(60.0)
        stream_end(lines)  # a stream whose cancelled tasks finish after the stop: logged at once
    logged = messages(caplog)
    assert len(logged) == 5, logged
    assert logged[3].startswith("4 more streams ended with 8 answers not written since the last line")


async def test_on_the_event_loop_the_summary_comes_by_itself(caplog: pytest.LogCaptureFixture) -> None:
    """The default timer is the running loop's call_later (a short ration here; waited for by
    an event the log handler sets, not by time)."""
    logged = asyncio.Event()

    class Signal(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "more streams ended" in record.getMessage():
                logged.set()

    handler = Signal()
    logger = logging.getLogger("server.protocol.stream_unsent")
    logger.addHandler(handler)
    try:
        lines = UnsentLines(burst=1, every_s=0.05)
        with caplog.at_level(logging.WARNING, "server.protocol.stream_unsent"):
            stream_end(lines)
            stream_end(lines)
            await asyncio.wait_for(logged.wait(), 30)
            lines.close()
    finally:
        logger.removeHandler(handler)
    assert messages(caplog)[-1].startswith("1 more streams ended with 2 answers not written")
