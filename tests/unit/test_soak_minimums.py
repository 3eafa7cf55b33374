"""The soak's loops reach what its checks need even when the window is over before they do: on a
busy CI machine the short soak once ended before the 20th mlp_hangs run and before the last four
hostile kinds (RELIABILITY.md, twenty-third session). Fakes stand in for the server here; the real
soak runs in tests/integration/test_soak.py."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from loadtest import soak_hostile
from loadtest.soak import RULES, exercised
from loadtest.soak_hostile import HOSTILE, KINDS, Kind, hostile_loop
from loadtest.soak_traffic import Books, closed_loop, mlp_request
from protos import grpc_service_pb2 as pb


class CountingStub:
    """ModelInfer answers OK at once (the id and rows asked for), counting the calls."""

    def __init__(self) -> None:
        self.calls = 0

    async def ModelInfer(self, request: pb.ModelInferRequest, timeout: float) -> pb.ModelInferResponse:
        self.calls += 1
        response = pb.ModelInferResponse(id=request.id)
        response.outputs.add(name="scores", shape=[request.inputs[0].shape[0], 2])
        return response


def _make(n: int) -> tuple[pb.ModelInferRequest, int]:
    return mlp_request("mlp", 1, f"r{n}"), 1


async def _past_window(until_after: int | None, overtime: int) -> CountingStub:
    stub, books = CountingStub(), Books()
    end = asyncio.get_running_loop().time() - 1.0  # the window is already over

    def until() -> bool:
        return until_after is not None and stub.calls >= until_after

    await closed_loop(stub, books.of("c"), end, _make, until, overtime)
    assert books.of("c").sent == books.of("c").ok == stub.calls
    return stub


def test_past_the_window_a_loop_goes_on_until_its_condition_holds() -> None:
    assert asyncio.run(_past_window(until_after=3, overtime=10)).calls == 3


def test_past_the_window_the_overtime_bounds_a_condition_that_never_holds() -> None:
    assert asyncio.run(_past_window(until_after=None, overtime=7)).calls == 7


def test_without_a_condition_a_loop_stops_at_the_window() -> None:
    stub, books = CountingStub(), Books()

    async def run() -> None:
        end = asyncio.get_running_loop().time() - 1.0
        await closed_loop(stub, books.of("c"), end, _make)

    asyncio.run(run())
    assert stub.calls == 0


def test_every_hostile_kind_is_sent_even_when_the_window_is_over(monkeypatch: pytest.MonkeyPatch) -> None:
    sent: list[str] = []

    def fake(kind: Kind) -> Kind:
        async def send(channel: Any, stub: Any, n: int) -> tuple[str | None, str]:
            sent.append(kind.name)
            return kind.expect, "refused"

        return Kind(kind.name, kind.expect, send)

    monkeypatch.setattr(soak_hostile, "KINDS", tuple(fake(kind) for kind in KINDS))
    books = Books()

    async def run() -> None:
        await hostile_loop(None, None, books, 0.0, asyncio.get_running_loop().time() - 1.0)

    asyncio.run(run())
    assert sent == [kind.name for kind in KINDS]  # one whole round, each once
    for kind in KINDS:
        tally = books.of(HOSTILE + kind.name)
        assert tally.sent == 1 and tally.errors[kind.expect] == 1


def test_with_reloads_off_the_soak_neither_checks_nor_misses_them() -> None:
    books = Books()
    for name in RULES:
        books.of(name).sent = 0 if name == "reload" else 1
    names = {check.name: check for check in exercised(books, {}, reloads=False)}
    assert "mlp reloaded" not in names
    assert names["every traffic class and hostile kind sent requests"].passed
    with_reloads = {check.name: check for check in exercised(books, {}, reloads=True)}
    assert not with_reloads["mlp reloaded"].passed
    assert with_reloads["every traffic class and hostile kind sent requests"].detail == "reload"
