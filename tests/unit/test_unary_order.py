"""UnaryOrder: preserve_ordering answers of unary calls leave in arrival order, per version."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from types import SimpleNamespace
from typing import Any, TypeVar

import pytest

from server.protocol.answer_turn import LateForTurn, wait_turn
from server.protocol.unary_order import UnaryOrder

T = TypeVar("T")


def version(name: str = "m", ordered: bool = True) -> Any:
    return SimpleNamespace(name=name, version=1, preserve_ordering=ordered)


def just(awaitable: Awaitable[T]) -> Callable[[asyncio.Event | None], Awaitable[T]]:
    """A call that ignores the answer ahead of it (the real path waits for it once computed)."""
    return lambda before: awaitable


async def test_answers_leave_in_arrival_order_failures_included() -> None:
    order, gates = UnaryOrder(), [asyncio.Event() for _ in range(3)]
    finished: list[int] = []

    async def call(i: int) -> int:
        await gates[i].wait()
        if i == 1:
            raise ValueError("bad rows")
        return i

    async def caller(i: int) -> None:
        with contextlib.suppress(ValueError):
            await order.answer(version(), just(call(i)))
        finished.append(i)

    tasks = [asyncio.create_task(caller(i)) for i in range(3)]
    await asyncio.sleep(0)  # all three have arrived, in order
    for i in (2, 1, 0):  # computed in reverse
        gates[i].set()
        await asyncio.sleep(0)
    await asyncio.gather(*tasks)
    assert finished == [0, 1, 2]
    assert not order._tails  # nothing kept once answered


async def test_a_caller_that_goes_away_releases_the_next_and_other_models_do_not_wait() -> None:
    order, first_gate = UnaryOrder(), asyncio.Event()
    first = asyncio.create_task(order.answer(version(), just(first_gate.wait())))
    second = asyncio.create_task(order.answer(version(), just(asyncio.sleep(0, result="second"))))
    other = asyncio.create_task(order.answer(version("n"), just(asyncio.sleep(0, result="other"))))
    unordered = asyncio.create_task(
        order.answer(version(ordered=False), just(asyncio.sleep(0, result="free")))
    )
    assert await other == "other" and await unordered == "free"
    assert not second.done()
    first.cancel()  # its caller went away
    assert await second == "second"
    with pytest.raises(asyncio.CancelledError):
        await first


async def test_a_held_answer_whose_caller_goes_away_does_not_let_the_next_overtake() -> None:
    """B done and held behind A; B's caller goes away: C (done too) was answered before A."""
    order, a_gate = UnaryOrder(), asyncio.Event()
    finished: list[str] = []

    async def caller(name: str, call: Any) -> None:
        await order.answer(version(), just(call))
        finished.append(name)

    a = asyncio.create_task(caller("A", a_gate.wait()))
    b = asyncio.create_task(caller("B", asyncio.sleep(0)))
    c = asyncio.create_task(caller("C", asyncio.sleep(0)))
    for _ in range(5):
        await asyncio.sleep(0)  # B and C computed, held behind A
    b.cancel()
    for _ in range(5):
        await asyncio.sleep(0)
    assert finished == [] and not c.done()
    a_gate.set()
    await asyncio.gather(a, c)
    assert finished == ["A", "C"]
    assert b.cancelled() and not order._tails


async def test_an_answer_late_for_its_turn_goes_at_once_and_the_next_still_waits_for_the_earlier() -> None:
    """B computed while A computes; B's deadline passes while it waits (LateForTurn): B is answered
    then, not after A, and C (computed, no deadline) still waits for A."""
    order, a_gate = UnaryOrder(), asyncio.Event()
    finished: list[str] = []

    async def late_for_turn(before: asyncio.Event | None) -> None:
        assert before is not None
        await wait_turn(before, time.monotonic() + 0.01)  # its deadline: 10 ms from now

    async def caller(name: str, call: Callable[[asyncio.Event | None], Awaitable[object]]) -> None:
        with contextlib.suppress(LateForTurn):
            await order.answer(version(), call)
        finished.append(name)

    a = asyncio.create_task(caller("A", just(a_gate.wait())))
    b = asyncio.create_task(caller("B", late_for_turn))
    c = asyncio.create_task(caller("C", just(asyncio.sleep(0))))
    await b  # over at its deadline while A still computes
    for _ in range(5):
        await asyncio.sleep(0)
    assert finished == ["B"] and not c.done()
    a_gate.set()
    await asyncio.gather(a, c)
    assert finished == ["B", "A", "C"]
    assert not order._tails
