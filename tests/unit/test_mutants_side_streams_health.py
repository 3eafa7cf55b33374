"""server/protocol/side_streams.py's LimitedHealth beyond tests/unit/test_side_streams.py: `forget`
(Check answers NOT_FOUND and a Watch SERVICE_UNKNOWN, as for a name never set; nothing during a
graceful shutdown, whose NOT_SERVING stays), the status a drained Watch is told last, and a Watch
whose client stopped reading, which holds up nothing else (grpc_health's servicer wrote under the
service's lock, and held up its other Watches, sets and forgets, and the drain). The same stand-in
context as there replaces grpc's."""

from __future__ import annotations

import asyncio
from typing import Any, NoReturn

import grpc
import pytest
from grpc_health.v1 import health_pb2

from server.protocol.side_streams import LimitedHealth
from tests.unit.test_side_streams import DRAINED, NOT_SERVING, SERVING, Aborted, Context, tracker

UNKNOWN = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
WAIT_S = 30  # only a broken server waits for it


class Client(Context):
    """A Watch's client whose writes can be awaited one by one. From its `hold_from`-th write on
    (1-based) it stops reading: the write waits for `release`, as grpc's does for such a client."""

    def __init__(self, hold_from: int | None = None) -> None:
        super().__init__()
        self.hold_from = hold_from
        self.holding = asyncio.Event()  # a write waits for `release`
        self.release = asyncio.Event()
        self._arrived: asyncio.Queue[Any] = asyncio.Queue()

    async def write(self, message: Any) -> None:
        await super().write(message)
        self._arrived.put_nowait(message)
        if self.hold_from is not None and len(self.written) >= self.hold_from and not self.release.is_set():
            self.holding.set()
            await self.release.wait()

    async def next_written(self) -> Any:
        return await asyncio.wait_for(self._arrived.get(), WAIT_S)

    async def abort(self, code: grpc.StatusCode, details: str = "", trailing_metadata: Any = ()) -> NoReturn:
        await super().abort(code, details, trailing_metadata)  # grpc_health's Check gives no details
        raise AssertionError("abort returned")


def answers(*statuses: int) -> list[health_pb2.HealthCheckResponse]:
    return [health_pb2.HealthCheckResponse(status=status) for status in statuses]


async def check(health: LimitedHealth, service: str) -> int | grpc.StatusCode:
    """The status Check answers for `service`, or the code it aborts with."""
    client = Client()
    try:
        answer = await health.Check(health_pb2.HealthCheckRequest(service=service), client)
    except Aborted:
        assert client.aborted is not None
        return client.aborted[0]
    return int(answer.status)


def watch(health: LimitedHealth, service: str, client: Client) -> asyncio.Task[None]:
    return asyncio.create_task(health.Watch(health_pb2.HealthCheckRequest(service=service), client))


async def drained(*tasks: asyncio.Task[None]) -> None:
    """Each task's Watch ended UNAVAILABLE by the drain."""
    ended = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), WAIT_S)
    assert all(isinstance(end, Aborted) for end in ended), ended


async def test_a_forgotten_service_is_answered_as_one_never_set() -> None:
    health = LimitedHealth(tracker())
    health.set("mlp", SERVING)
    health.set("cnn", SERVING)
    health.forget("mlp")
    assert await check(health, "mlp") == grpc.StatusCode.NOT_FOUND
    assert await check(health, "cnn") == SERVING  # only the name forgotten
    assert await check(health, "") == SERVING
    client = Client()
    task = watch(health, "mlp", client)
    assert await client.next_written() == answers(UNKNOWN)[0]
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_check_of_an_unknown_service_says_which_not_found() -> None:
    client = Client()
    with pytest.raises(Aborted):
        await LimitedHealth(tracker()).Check(health_pb2.HealthCheckRequest(service="nope"), client)
    assert client.aborted == (grpc.StatusCode.NOT_FOUND, "the server has no health service 'nope'")


async def test_forgetting_a_name_never_set_changes_nothing() -> None:
    health = LimitedHealth(tracker())
    health.set("mlp", SERVING)
    health.forget("never")
    health.forget("never")
    assert await check(health, "never") == grpc.StatusCode.NOT_FOUND
    assert await check(health, "mlp") == SERVING


async def test_a_name_forgotten_can_be_set_again() -> None:
    health = LimitedHealth(tracker())
    health.set("mlp", NOT_SERVING)
    health.forget("mlp")
    health.forget("mlp")  # twice: the second finds nothing to drop
    health.set("mlp", SERVING)
    assert await check(health, "mlp") == SERVING


async def test_a_watch_of_a_forgotten_service_is_told_service_unknown_and_follows_the_name() -> None:
    calls, client = tracker(), Client()
    health = LimitedHealth(calls)
    health.set("mlp", SERVING)
    task = watch(health, "mlp", client)
    assert await client.next_written() == answers(SERVING)[0]
    health.forget("mlp")
    assert await client.next_written() == answers(UNKNOWN)[0]
    assert await check(health, "mlp") == grpc.StatusCode.NOT_FOUND
    health.set("mlp", NOT_SERVING)  # loaded again: the watch still follows it
    assert await client.next_written() == answers(NOT_SERVING)[0]
    calls.finish_streams()
    await drained(task)
    assert client.written == answers(SERVING, UNKNOWN, NOT_SERVING)  # the last was written already
    assert client.aborted == DRAINED


async def test_forgetting_during_a_graceful_shutdown_leaves_not_serving() -> None:
    calls, client = tracker(), Client()
    health = LimitedHealth(calls)
    health.set("mlp", SERVING)
    health.set("cnn", SERVING)
    task = watch(health, "mlp", client)
    assert await client.next_written() == answers(SERVING)[0]
    health.enter_graceful_shutdown()
    assert await client.next_written() == answers(NOT_SERVING)[0]
    health.forget("mlp")  # watched
    health.forget("cnn")  # not watched
    health.forget("never")
    assert [await check(health, name) for name in ("mlp", "cnn")] == [NOT_SERVING, NOT_SERVING]
    assert await check(health, "never") == grpc.StatusCode.NOT_FOUND
    calls.finish_streams()
    await drained(task)
    assert client.written == answers(SERVING, NOT_SERVING)


async def test_a_set_and_forgets_while_a_watchs_write_waits_return_at_once_and_it_tells_the_last() -> None:
    calls, client = tracker(), Client(hold_from=2)
    health = LimitedHealth(calls)
    health.set("mlp", SERVING)
    task = watch(health, "mlp", client)
    assert await client.next_written() == answers(SERVING)[0]
    health.set("mlp", NOT_SERVING)
    await asyncio.wait_for(client.holding.wait(), WAIT_S)
    health.forget("mlp")  # while the write of NOT_SERVING waits for its client
    health.forget("mlp")  # the second finds the name gone
    assert await check(health, "mlp") == grpc.StatusCode.NOT_FOUND
    client.release.set()
    assert await client.next_written() == answers(NOT_SERVING)[0]
    assert await client.next_written() == answers(UNKNOWN)[0]
    calls.finish_streams()
    await drained(task)
    assert client.written == answers(SERVING, NOT_SERVING, UNKNOWN)


async def test_a_drained_watch_of_a_service_never_set_is_told_service_unknown_once() -> None:
    calls, client = tracker(), Client()
    task = watch(LimitedHealth(calls), "never", client)
    assert await client.next_written() == answers(UNKNOWN)[0]
    calls.finish_streams()
    await drained(task)
    assert client.written == answers(UNKNOWN)
    assert client.aborted == DRAINED


@pytest.mark.parametrize(
    ("change", "last"), [("set", NOT_SERVING), ("shutdown", NOT_SERVING), ("forget", UNKNOWN)]
)
async def test_a_watch_whose_client_stopped_reading_holds_up_no_other_watch_nor_the_drain(
    change: str, last: int
) -> None:
    # grpc_health's Watch wrote holding its service's lock: the other Watch heard of no change, and
    # the next set, forget or drain waited, until the stopped client read again.
    calls, stopped, reading = tracker(), Client(hold_from=2), Client()
    health = LimitedHealth(calls)
    health.set("mlp", SERVING)
    tasks = [watch(health, "mlp", stopped)]
    assert await stopped.next_written() == answers(SERVING)[0]
    tasks.append(watch(health, "mlp", reading))
    assert await reading.next_written() == answers(SERVING)[0]
    if change == "set":
        health.set("mlp", NOT_SERVING)
    else:
        health.enter_graceful_shutdown() if change == "shutdown" else health.forget("mlp")
    await asyncio.wait_for(stopped.holding.wait(), WAIT_S)
    assert await reading.next_written() == answers(last)[0]  # while the other's write waits
    calls.finish_streams()
    await drained(tasks[1])  # the drain ends the reading one at once
    assert reading.aborted == DRAINED
    assert not tasks[0].done()
    stopped.release.set()
    await drained(tasks[0])
    assert stopped.written == answers(SERVING, last)  # the write it had begun: not written again
    assert reading.written == answers(SERVING, last)
    assert stopped.aborted == DRAINED
    assert (calls.open_streams, calls.active) == (0, 0)


async def test_a_watch_still_hears_of_changes_after_another_watch_of_its_service_ends() -> None:
    """grpc_health 1.81 drops a service's wait condition when any Watch of it ends; the Watches still
    open waited on a condition nobody notified, and heard of no change until the drain (upstream:
    grpc/grpc#43403). LimitedHealth drops it when the last one ends."""
    health = LimitedHealth(tracker())
    health.set("m", SERVING)
    staying, leaving = Client(), Client()
    stays, leaves = watch(health, "m", staying), watch(health, "m", leaving)
    assert [await staying.next_written(), await leaving.next_written()] == answers(SERVING, SERVING)
    leaves.cancel()  # its client went away
    await asyncio.gather(leaves, return_exceptions=True)
    health.set("m", NOT_SERVING)
    assert await staying.next_written() == answers(NOT_SERVING)[0]
    health.forget("m")
    assert await staying.next_written() == answers(UNKNOWN)[0]
    stays.cancel()
    await asyncio.gather(stays, return_exceptions=True)
    assert "m" not in health._watches  # the last one gone: nothing kept for the name
