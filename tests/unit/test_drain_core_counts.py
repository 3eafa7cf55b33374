"""The drain's quiet wait with grpc core's call counts (server/protocol/core_calls.py): a call grpc
core has taken that no handler has seen holds the endpoint open, within the wait's bound."""

from __future__ import annotations

import json
import time

from server.protocol.calls import CallTracker, StreamLimits
from server.protocol.core_calls import CoreCalls, CoreCounts

LIMITS = StreamLimits(8, 8, 8)


class FakeCore:
    """grpc core's counts, one reading each look; the last one repeats."""

    def __init__(self, *readings: CoreCounts) -> None:
        self.readings = list(readings)
        self.looks = 0

    def __call__(self) -> CoreCounts | None:
        self.looks += 1
        return self.readings.pop(0) if len(self.readings) > 1 else self.readings[0]


async def test_a_call_only_grpc_core_holds_keeps_the_wait_going_until_the_deadline() -> None:
    calls = CallTracker(LIMITS)  # no handler has seen a call: idle, quiet since ever
    core = FakeCore(CoreCounts(started=5, ended=4))  # one call taken, never answered
    assert await calls.wait_quiet(time.monotonic() + 0.2, 0.0, core) is False
    assert core.looks > 1
    # Without grpc core's counts the same wait ends at once (what the drain did before).
    assert await calls.wait_quiet(time.monotonic() + 0.2, 0.0) is True


async def test_the_wait_ends_once_grpc_core_has_answered_every_call_it_took() -> None:
    calls = CallTracker(LIMITS)
    core = FakeCore(CoreCounts(5, 3), CoreCounts(5, 4), CoreCounts(5, 5))
    assert await calls.wait_quiet(time.monotonic() + 30, 0.0, core) is True
    assert core.looks == 3


async def test_a_call_grpc_core_takes_during_the_wait_starts_the_quiet_window_again() -> None:
    calls = CallTracker(LIMITS)
    # A call unanswered at the first look; at the next every call is answered, but one more was
    # taken in between: quiet is counted from that look, so a window past the bound is not reached.
    core = FakeCore(CoreCounts(5, 4), CoreCounts(6, 6))
    assert await calls.wait_quiet(time.monotonic() + 0.2, 60.0, core) is False
    core = FakeCore(CoreCounts(5, 4), CoreCounts(6, 6))
    assert await calls.wait_quiet(time.monotonic() + 30, 0.05, core) is True
    assert core.looks > 2  # it waited out the window after the new call


def test_counts_read_from_channelz_json() -> None:
    answers = {
        7: json.dumps({"server": {"data": {"callsStarted": "9", "callsSucceeded": "4", "callsFailed": "3"}}}),
        8: json.dumps({"server": {"data": {}}}),  # proto3 JSON leaves zeros out
    }

    def read(server_id: int) -> str:
        if server_id not in answers:
            raise ValueError(f"Failed to get the server, please ensure your server_id=={server_id} is valid")
        return answers[server_id]

    assert CoreCalls(7, read).counts() == CoreCounts(9, 7)
    assert CoreCalls(7, read).counts().unanswered == 2  # type: ignore[union-attr]
    assert CoreCalls(8, read).counts() == CoreCounts(0, 0)
    assert CoreCalls(9, read).counts() is None  # gone: no counts, the drain watches its handlers
