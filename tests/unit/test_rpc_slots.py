"""The server's own `max_concurrent_rpcs` bound (server/protocol/rpc_slots.py) and the wrappers
that hold a slot for each call (server/protocol/malformed.py), without a server."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from server.protocol import malformed
from server.protocol.calls import CallTracker, StreamLimits
from server.protocol.rpc_slots import LOG_EVERY_S, OPEN, REFUSED, RpcSlots
from tests.support.batcher_fakes import Clock


def test_slots_are_taken_up_to_the_limit_then_refused_and_counted() -> None:
    slots = RpcSlots(2, call_later=lambda delay, callback: None)
    assert slots.take() and slots.take()
    assert not slots.take() and not slots.take()
    assert (slots.open, slots.refused) == (2, 2)
    slots.give()
    assert slots.take()  # the slot given back is taken again
    assert not slots.take()
    assert dict((name, value) for name, _, value in slots.gauge_values()) == {REFUSED: 3.0, OPEN: 2.0}
    assert "max_concurrent_rpcs=2" in slots.refusal
    assert slots.refusal.startswith("Concurrent RPC limit exceeded!")


def test_a_limit_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        RpcSlots(0)


def test_refusals_are_logged_at_most_once_every_log_every_s(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    due: list[tuple[float, Any]] = []
    slots = RpcSlots(1, clock=clock, call_later=lambda delay, callback: due.append((delay, callback)))
    assert slots.take()
    with caplog.at_level(logging.WARNING, logger="sluiceway.calls"):
        assert not slots.take()  # the first is logged at once
        assert not due
        clock.now += LOG_EVERY_S - 0.5
        assert not slots.take() and not slots.take()  # within the period: not logged, one line due
        assert [delay for delay, _ in due] == [0.5]
        clock.now += 0.5
        due[0][1]()  # the period's end: one line with the two since the last
        clock.now += 1
        assert not slots.take()  # within the new period: a line due again
        assert len(due) == 2
        clock.now += LOG_EVERY_S
        due[1][1]()
        due[1][1]()  # nothing new since: no line
        clock.now = slots._logged_at + LOG_EVERY_S  # a period after the last line, to the tick
        due.clear()
        assert not slots.take()  # said at once: no line left due
        assert not due
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 4, lines
    assert lines[3] == (
        "refused 1 call RESOURCE_EXHAUSTED: 1 calls were in progress (max_concurrent_rpcs) "
        f"(at most a line every {LOG_EVERY_S:g} s)"
    )
    assert lines[0].startswith("refused 1 call RESOURCE_EXHAUSTED: 1 calls were in progress")
    assert lines[1].startswith("refused 2 calls RESOURCE_EXHAUSTED")
    assert lines[2].startswith("refused 1 call RESOURCE_EXHAUSTED")


def test_close_logs_the_refusals_not_yet_said(caplog: pytest.LogCaptureFixture) -> None:
    """A stop within a period had dropped its refusals from the log (a tester: 5 logged of 12)."""
    clock = Clock()
    cancelled: list[bool] = []

    class Timer:
        def cancel(self) -> None:
            cancelled.append(True)

    slots = RpcSlots(1, clock=clock, call_later=lambda delay, callback: Timer())
    assert slots.take()
    with caplog.at_level(logging.WARNING, logger="sluiceway.calls"):
        assert not slots.take()
        clock.now += 1
        assert not slots.take() and not slots.take()
        slots.close()
        slots.close()  # nothing more to say
    lines = [r.getMessage() for r in caplog.records]
    assert [line.split(" RESOURCE")[0] for line in lines] == ["refused 1 call", "refused 2 calls"]
    assert cancelled == [True]


def test_close_without_a_timer_to_cancel_still_logs() -> None:
    """A `call_later` that returns nothing to cancel (the line due) is not cancelled, only said."""
    slots = RpcSlots(1, clock=Clock(), call_later=lambda delay, callback: None)
    assert slots.take()
    assert not slots.take() and not slots.take()  # the second is due
    slots.close()
    assert slots._logged == slots.refused == 2


class Context:
    """The part of grpc.aio.ServicerContext the wrappers use."""

    def __init__(self) -> None:
        self.aborted: tuple[grpc.StatusCode, str] | None = None

    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        self.aborted = (code, details)
        raise grpc.aio.AbortError()

    async def read(self) -> Any:
        return b"request"

    def peer(self) -> str:
        return "ipv4:127.0.0.1:1"


async def answers(requests: AsyncIterator[Any]) -> list[Any]:
    return [r async for r in requests]


@pytest.mark.parametrize(
    "kind", ["unary_unary", "unary_stream", "stream_stream_written", "stream_stream_in_band"]
)
def test_each_kind_of_method_holds_a_slot_while_it_runs_and_is_refused_unread_past_the_limit(
    kind: str,
) -> None:
    async def run() -> None:
        slots = RpcSlots(1)
        inside = asyncio.Event()
        release = asyncio.Event()
        read: list[Any] = []

        async def single(request: Any, context: Any) -> str:
            read.append(request)
            inside.set()
            await release.wait()
            return "answer"

        async def written(requests: AsyncIterator[Any], context: Any) -> None:
            read.extend(await answers(requests))
            inside.set()
            await release.wait()

        async def yielding(requests: AsyncIterator[Any], context: Any) -> AsyncIterator[str]:
            read.extend(await answers(requests))
            inside.set()
            await release.wait()
            yield "answer"

        if kind == "stream_stream_in_band":
            wrapped = malformed._gated_stream(yielding, slots)
        elif kind == "stream_stream_written":
            wrapped = malformed._refusing("stream_stream", written, None, slots)
        else:
            wrapped = malformed._refusing(kind, single, None, slots)

        async def requests() -> AsyncIterator[bytes]:
            yield b"frame"

        async def call(context: Context) -> Any:
            if kind == "stream_stream_in_band":
                return [a async for a in wrapped(requests(), context)]
            if kind == "stream_stream_written":
                return await wrapped(requests(), context)
            return await wrapped(None, context)

        first = asyncio.create_task(call(Context()))
        await inside.wait()
        assert slots.open == 1
        refused = Context()
        with pytest.raises(grpc.aio.AbortError):
            await call(refused)
        assert refused.aborted == (grpc.StatusCode.RESOURCE_EXHAUSTED, slots.refusal)
        assert len(read) == 1  # the refused call's message was never read
        release.set()
        await first
        assert (slots.open, slots.refused) == (0, 1)
        second = asyncio.create_task(call(Context()))  # the slot is free again
        await inside.wait()
        await second
        assert slots.open == 0

    asyncio.run(run())


def test_a_cancelled_call_gives_its_slot_back() -> None:
    async def run() -> None:
        slots = RpcSlots(1)
        inside = asyncio.Event()

        async def hang(request: Any, context: Any) -> None:
            inside.set()
            await asyncio.Event().wait()

        wrapped = malformed._refusing("unary_unary", hang, None, slots)
        task = asyncio.create_task(wrapped(None, Context()))
        await inside.wait()
        assert slots.open == 1
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert slots.open == 0

    asyncio.run(run())


class Session:
    """What the tracker asks of an open stream (calls.Finishable)."""

    def finish(self, why: str = "") -> None:
        pass


def test_streams_refused_at_a_cap_are_counted_by_the_setting_that_refused_them() -> None:
    tracker = CallTracker(StreamLimits(total=3, per_connection=1, per_peer=2))

    def opened(peer: str) -> Any:
        stream = tracker.stream(peer, Session())
        stream.__enter__()
        return stream

    held = [opened("ipv4:10.0.0.1:1"), opened("ipv4:10.0.0.1:2")]
    refusals = {}
    for peer, limit in (
        ("ipv4:10.0.0.1:1", "max_streams_per_connection"),
        ("ipv4:10.0.0.1:3", "max_streams_per_peer"),
    ):
        with pytest.raises(Exception, match=limit):
            opened(peer)
        refusals[limit] = 1
    held.append(opened("ipv4:10.0.0.2:1"))
    with pytest.raises(Exception, match="max_streams=3"):
        opened("ipv4:10.0.0.3:1")
    refusals["max_streams"] = 1
    assert dict(tracker.refused) == refusals
    assert {labels["limit"]: value for _, labels, value in tracker.gauge_values()} == refusals
    for stream in held:
        stream.__exit__(None, None, None)


def test_the_slot_cost_benchmark_runs_and_says_both_figures(capsys: pytest.CaptureFixture[str]) -> None:
    from loadtest import slot_cost

    asyncio.run(slot_cost._main(200, 1))
    out = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in out] == ["unary call", "stream message"]
    assert all("without the slot" in line and "with it" in line for line in out)
