"""The sweep over calls waiting for their request message (server/protocol/message_wait.py): which
calls it ends, with what, and when it looks again; on fake calls, their ages set by hand."""

from __future__ import annotations

import asyncio
from typing import cast

import grpc
import pytest

from server.protocol.message_wait import GRACE_S, MessageWaits, Wait, read_message


class FakeContext:
    def __init__(self, peer: str) -> None:
        self._peer = peer

    def peer(self) -> str:
        return self._peer


async def _waiting(waits: MessageWaits, peer: str, age_s: float) -> tuple[Wait, asyncio.Task[None]]:
    """A task that waits for ever, registered as a call from `peer` that began `age_s` ago."""
    holder: list[Wait] = []

    async def handler() -> None:
        holder.append(waits.begin(cast(grpc.aio.ServicerContext, FakeContext(peer))))
        await asyncio.Event().wait()

    task = asyncio.get_running_loop().create_task(handler())
    await asyncio.sleep(0)  # the task registers itself
    holder[0].since -= age_s
    return holder[0], task


async def test_a_peers_calls_past_the_grace_beyond_its_bound_are_ended_oldest_first() -> None:
    waits = MessageWaits(timeout_s=30, per_peer=2)
    made = [
        await _waiting(waits, f"ipv4:10.0.0.1:{5000 + i}", GRACE_S + age)
        for i, age in enumerate((3, 1, 4, 2))
    ]
    young = await _waiting(waits, "ipv4:10.0.0.1:6000", 0)  # within the grace: not counted
    other = await _waiting(waits, "ipv4:10.0.0.2:5000", GRACE_S + 9)  # another host: its own bound
    waits._sweep()
    assert waits.ended == {"timeout": 0, "per_peer": 0}  # the first look past the grace marks them
    waits._sweep()
    ended = [w.why is not None for w, _ in made]
    assert ended == [True, False, True, False]  # the two oldest of 10.0.0.1's four
    code, message = made[0][0].why or (None, "")
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "too many calls from ipv4:10.0.0.1 waiting over 1 s" in message
    assert "max_calls_awaiting_message_per_peer=2" in message
    assert young[0].why is None and other[0].why is None
    assert waits.ended == {"timeout": 0, "per_peer": 2} and waits.count == 6
    for _, task in [*made, young, other]:
        task.cancel()
    waits.close()


async def test_a_call_past_the_timeout_is_ended_deadline_exceeded_and_none_without_one() -> None:
    timed = MessageWaits(timeout_s=5, per_peer=64)
    old, task = await _waiting(timed, "ipv4:10.0.0.1:5000", 5.1)
    fresh, fresh_task = await _waiting(timed, "ipv4:10.0.0.1:5001", 4.9)
    timed._sweep()
    timed._sweep()
    assert old.why == (
        grpc.StatusCode.DEADLINE_EXCEEDED,
        "the request message did not arrive within 5 s of the call's start (request_message_timeout_s)",
    )
    assert fresh.why is None
    untimed = MessageWaits(timeout_s=0, per_peer=64)
    ancient, ancient_task = await _waiting(untimed, "ipv4:10.0.0.1:5002", 3600)
    untimed._sweep()
    untimed._sweep()
    assert ancient.why is None
    for t in (task, fresh_task, ancient_task):
        t.cancel()
    timed.close()
    untimed.close()


async def test_the_sweep_looks_again_only_while_calls_wait() -> None:
    waits = MessageWaits(timeout_s=30, per_peer=64)
    wait, task = await _waiting(waits, "ipv4:10.0.0.1:5000", 0)
    assert waits._timer is not None  # the first call scheduled a look
    waits._sweep()
    assert waits._timer is not None  # it still waits: another look
    waits.end(wait)
    waits._sweep()
    assert waits._timer is None and waits.count == 0  # nothing waits: no timer runs
    task.cancel()


@pytest.mark.parametrize("ended_by_sweep", [False, True])
async def test_a_handlers_read_answers_the_sweeps_status_or_passes_grpcs_cancel_on(
    ended_by_sweep: bool,
) -> None:
    aborted: list[tuple[grpc.StatusCode, str]] = []

    class Context(FakeContext):
        async def read(self) -> object:
            await asyncio.Event().wait()
            return None

        async def abort(self, code: grpc.StatusCode, message: str) -> None:
            aborted.append((code, message))
            raise RuntimeError("aborted")  # grpc's AbortError

    waits = MessageWaits(timeout_s=5, per_peer=64)
    task = asyncio.get_running_loop().create_task(
        read_message(cast(grpc.aio.ServicerContext, Context("p")), waits)
    )
    await asyncio.sleep(0)
    (wait,) = waits._waits
    if ended_by_sweep:
        wait.since -= 6
        waits._sweep()
        waits._sweep()
        with pytest.raises(RuntimeError, match="aborted"):
            await task
        assert aborted and aborted[0][0] == grpc.StatusCode.DEADLINE_EXCEEDED
    else:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert aborted == []
    assert waits.count == 0
    waits.close()


async def test_a_call_whose_message_came_during_a_stall_is_read_before_the_look_that_ends_calls() -> None:
    """The loop held 2 s ages every call waiting then; the first look after it only marks them,
    and the handler whose message had come reads it in the loop's next turns, before the next look."""
    waits = MessageWaits(timeout_s=1.5, per_peer=1)
    stalled = [await _waiting(waits, f"ipv4:10.0.0.1:{5000 + i}", 2.0) for i in range(3)]
    waits._sweep()  # the first look after the stall
    assert sum(waits.ended.values()) == 0
    for wait, _ in stalled[:2]:
        waits.end(wait)  # their messages had come: read in the next turns
    waits._sweep()
    assert [w.why is not None for w, _ in stalled] == [False, False, True]  # past the 1.5 s timeout
    for _, task in stalled:
        task.cancel()
    waits.close()


async def test_a_peers_bound_applies_only_while_many_calls_wait_past_the_grace() -> None:
    """Many calls of one host through a slow proxy wait on (up to the timeout) while the server has
    room: the bound is for a slowloris's thousands, not a slow link's hundred."""
    for pressure_at, ended in ((4, 0), (3, 2)):
        waits = MessageWaits(timeout_s=30, per_peer=2, pressure_at=pressure_at)
        made = [await _waiting(waits, f"ipv4:10.0.0.1:{5000 + i}", GRACE_S + i) for i in range(4)]
        waits._sweep()
        waits._sweep()
        assert waits.ended["per_peer"] == ended
        for _, task in made:
            task.cancel()
        waits.close()


async def test_ended_calls_are_counted_for_metrics_and_logged_once_a_while(
    caplog: pytest.LogCaptureFixture,
) -> None:
    waits = MessageWaits(timeout_s=5, per_peer=1)
    made = [await _waiting(waits, f"ipv4:10.0.0.1:{5000 + i}", age) for i, age in enumerate((6, 2, 3))]
    with caplog.at_level("WARNING", logger="server.protocol.message_wait"):
        waits._sweep()
        waits._sweep()
        waits._sweep()
    values = {labels["reason"]: value for _, labels, value in waits.gauge_values()}
    assert values == {"timeout": 1.0, "per_peer": 1.0}
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "ended 2 calls waiting for their request message: 1 past request_message_timeout_s (5 s), "
        "1 beyond max_calls_awaiting_message_per_peer (1) (at most a line every 10 s)"
    ]
    for _, task in made:
        task.cancel()
    waits.close()
