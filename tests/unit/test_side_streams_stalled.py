"""A health Watch or reflection stream whose client stopped reading (its writes never taken) is
given STALLED_WRITE_S once the drain begins, then left as it is and counted (side_streams.py,
calls.py), so that the stop does not wait the whole grace for it (a tester of session 50: 5.6 s of
a 5 s grace, 15.8 s of 15 s, nothing logged). tests/integration/test_stalled_side_streams.py runs
it against a real server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2

from server.protocol import side_streams
from server.protocol.calls import CallTracker, StreamLimits
from server.protocol.core_calls import CoreCounts
from server.protocol.side_streams import LimitedHealth, LimitedReflection

PEER = "ipv4:127.0.0.1:5000"
SERVING = health_pb2.HealthCheckResponse.SERVING


class Stuck:
    """A context whose writes after the first `taken` are never taken (a client that stopped)."""

    def __init__(self, taken: int = 1) -> None:
        self.taken = taken
        self.written: list[Any] = []
        self.aborted: tuple[grpc.StatusCode, str] | None = None
        self.waiting = asyncio.Event()
        self.on_done: list[Any] = []

    def add_done_callback(self, callback: Any) -> None:
        self.on_done.append(callback)

    def end(self) -> None:
        """The call ends (the stop cancels it, its client is killed, its deadline passes)."""
        for callback in self.on_done:
            callback(self)

    def peer(self) -> str:
        return PEER

    async def write(self, message: Any) -> None:
        if len(self.written) >= self.taken:
            self.waiting.set()
            await asyncio.Event().wait()  # never taken
        self.written.append(message)

    async def abort(self, code: grpc.StatusCode, details: str, trailing_metadata: Any = ()) -> None:
        self.aborted = (code, details)
        raise RuntimeError("aborted")


def _tracker() -> CallTracker:
    return CallTracker(StreamLimits(4, 4, 4))


@pytest.fixture(autouse=True)
def _short(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(side_streams, "STALLED_WRITE_S", 0.05)


async def test_a_watch_whose_write_waits_through_the_drain_is_left_and_counted_until_its_call_ends() -> None:
    calls, context = _tracker(), Stuck()
    health = LimitedHealth(calls)
    health.set("m", SERVING)
    task = asyncio.create_task(health.Watch(health_pb2.HealthCheckRequest(service="m"), context))
    while not context.written:  # SERVING taken
        await asyncio.sleep(0)
    health.set("m", health_pb2.HealthCheckResponse.NOT_SERVING)  # its second write is never taken
    await asyncio.wait_for(context.waiting.wait(), 30)
    assert not task.done() and calls.stalled == 0  # no drain yet: a slow client may read later
    calls.finish_streams()
    while calls.active:
        await asyncio.sleep(0.01)
    # Off the tracker and counted, it waits for its call's end: no abort, no status sent behind
    # the write its client never took.
    assert (calls.open_streams, calls.stalled) == (0, 1) and not task.done()
    context.end()
    await asyncio.wait_for(task, 30)
    assert context.aborted is None and [m.status for m in context.written] == [SERVING]
    assert calls.stalled == 0  # an ended call is no longer counted: the stop waits for answers again


async def test_a_handler_cancelled_while_its_write_waits_leaves_no_task_behind() -> None:
    # A client's cancel had left the write's and the drain's tasks pending ("Task was destroyed
    # but it is pending!", "Task exception was never retrieved"), 13 ERROR lines for 10 cancels.
    calls, context = _tracker(), Stuck(taken=0)
    before = asyncio.all_tasks()
    task = asyncio.create_task(LimitedHealth(calls).Watch(health_pb2.HealthCheckRequest(service=""), context))
    await asyncio.wait_for(context.waiting.wait(), 30)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert asyncio.all_tasks() - before - {asyncio.current_task()} == set()
    assert (calls.active, calls.stalled) == (0, 0)


async def test_a_watch_whose_last_write_is_taken_ends_unavailable_and_is_not_counted() -> None:
    calls, context = _tracker(), Stuck(taken=2)
    health = LimitedHealth(calls)
    health.set("m", SERVING)
    task = asyncio.create_task(health.Watch(health_pb2.HealthCheckRequest(service="m"), context))
    while not context.written:
        await asyncio.sleep(0)
    health.enter_graceful_shutdown()
    calls.finish_streams()
    with pytest.raises(RuntimeError, match="aborted"):
        await asyncio.wait_for(task, 30)
    assert context.aborted == (grpc.StatusCode.UNAVAILABLE, "server is shutting down: this stream is ended")
    assert calls.stalled == 0


async def test_a_reflection_stream_whose_answer_is_never_taken_is_left_and_counted() -> None:
    calls, context = _tracker(), Stuck(taken=0)

    async def ask() -> AsyncIterator[reflection_pb2.ServerReflectionRequest]:
        yield reflection_pb2.ServerReflectionRequest(list_services="")
        await asyncio.Event().wait()

    task = asyncio.create_task(LimitedReflection(("a.B",), None, calls).ServerReflectionInfo(ask(), context))
    await asyncio.wait_for(context.waiting.wait(), 30)
    calls.finish_streams()
    while calls.active:
        await asyncio.sleep(0.01)
    assert calls.stalled == 1 and not task.done()
    context.end()
    await asyncio.wait_for(task, 30)
    assert context.aborted is None and (calls.active, calls.stalled) == (0, 0)


async def test_a_write_that_fails_fails_the_stream() -> None:
    class Gone(Stuck):
        async def write(self, message: Any) -> None:
            raise ConnectionError("the client went away")

    calls = _tracker()
    with pytest.raises(ConnectionError):
        await LimitedHealth(calls).Watch(health_pb2.HealthCheckRequest(service=""), Gone())
    assert (calls.active, calls.stalled) == (0, 0)


def test_only_stalled_streams_left_is_told_by_the_handlers_and_grpc_cores_count() -> None:
    calls = _tracker()
    calls.stalled_ended()  # never below none
    assert calls.stalled == 0
    assert not calls.only_stalled_left(CoreCounts(started=3, ended=3))  # none stalled: nothing to cut
    calls.note_stalled()
    calls.note_stalled()
    assert calls.stalled == 2
    assert calls.only_stalled_left(CoreCounts(started=5, ended=3))
    assert calls.only_stalled_left(CoreCounts(started=5, ended=4))
    assert not calls.only_stalled_left(CoreCounts(started=6, ended=3))  # an answer still owed
    assert not calls.only_stalled_left(None)  # channelz off: core's calls unknown
    calls.enter()  # a handler still runs
    assert not calls.only_stalled_left(CoreCounts(started=5, ended=3))
    calls.exit()
    calls.stalled_ended()  # one stalled call ended: core's other unanswered call owes an answer
    assert calls.stalled == 1 and not calls.only_stalled_left(CoreCounts(started=5, ended=3))


async def test_a_drains_quiet_wait_does_not_wait_for_stalled_streams() -> None:
    calls = _tracker()
    calls.note_stalled()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 30
    quiet = await calls.wait_quiet(deadline, 0.0, lambda: CoreCounts(started=4, ended=3))
    assert quiet and loop.time() < deadline - 25
