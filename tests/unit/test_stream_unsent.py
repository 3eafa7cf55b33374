"""A stream's answers made and never written (its call ended first) are counted unsent, once each,
in the statistics their outcome was counted in, for why the call ended; one line says how many.

StreamSession without gRPC: the model keeps its order, so the answers made after a held request
wait unwritten behind it until the consumer of `answers()` is cancelled (as grpc cancels a call's
handler for a client's cancel, a lost connection or a frame over its hard ceiling).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any, cast

import pytest

from batcher.errors import ComputedThenCancelled
from batcher.stats import UNSENT_REASONS, ModelStats
from protos import grpc_service_pb2 as pb
from server.errors import InvalidRequest
from server.protocol.request_path import RequestPath
from server.protocol.served_notes import note_served
from server.protocol.stream import StreamSession
from server.protocol.stream_unsent import Unsent, UnsentLines, end_reason

SETTLE_TURNS = 50


class HeldFirst:
    """A preserve_ordering model: request "1" waits in a batcher until `release` (or, with
    `computed`, was computed when its caller went); "2" is answered at once (a success), "3" is
    refused at once (a failure); both wait behind "1" to be written."""

    def __init__(self, computed: bool = False) -> None:
        self.stats = ModelStats()
        self.model = SimpleNamespace(name="m", version=1, latest_frame_wins=False, preserve_ordering=True)
        self.release = asyncio.Event()
        self.computed = computed

    def model_of(self, request: pb.ModelInferRequest) -> Any:
        return self.model

    def needs_load(self, request: pb.ModelInferRequest) -> bool:
        return False

    def evictable(self, request: pb.ModelInferRequest) -> bool:
        return False

    def job(self, request: pb.ModelInferRequest) -> Any:
        return SimpleNamespace(id=request.id, served=SimpleNamespace(stats=self.stats))

    def start(self, request: pb.ModelInferRequest, *args: object, **kwargs: object) -> tuple[Any, Any]:
        if request.id == "3":
            exc = InvalidRequest("input 'x' has 3 columns, the model takes 4")
            self.stats.record_failure(0)
            note_served(exc, "1", self.stats)
            raise exc
        if request.id == "1":
            return self.job(request), None
        self.stats.record_success(0)
        return self.job(request), pb.ModelInferResponse(id=request.id)

    async def finish(
        self, job: Any, start_ns: int, turn: object = None, before: object = None
    ) -> pb.ModelInferResponse:
        try:
            await self.release.wait()
        except asyncio.CancelledError:
            if not self.computed:
                raise
            self.stats.record_success(0)  # as RequestPath: computed before its caller went
            exc = ComputedThenCancelled()
            note_served(exc, "1", self.stats)
            raise exc from None
        self.stats.record_success(0)
        return pb.ModelInferResponse(id=job.id)

    async def serve(self, request: pb.ModelInferRequest, *args: object) -> Any:
        job, now = self.start(request)
        return job, now if now is not None else await self.finish(job, 0)


async def three_requests() -> AsyncIterator[pb.ModelInferRequest]:
    for rid in ("1", "2", "3"):
        yield pb.ModelInferRequest(model_name="m", id=rid)
    await asyncio.Event().wait()  # a caller that sends nothing more and does not close


async def settle() -> None:
    for _ in range(SETTLE_TURNS):
        await asyncio.sleep(0)


async def end_with_answers_held(path: HeldFirst, deadline: float | None = None, drain: bool = False) -> None:
    """Read the three requests, then cancel the consumer of the answers, as grpc ends a call."""
    session = StreamSession(three_requests(), cast(RequestPath, path), max_in_flight=8, deadline=deadline)
    answers = session.answers()
    consumer = asyncio.ensure_future(anext(answers))
    await settle()
    assert path.stats.success.count == 1 and path.stats.fail.count == 1  # "2" and "3" made
    if drain:
        session.finish("drain")
    consumer.cancel()
    with pytest.raises(asyncio.CancelledError):
        await consumer
    await settle()  # the tasks the end cancelled finish and count theirs


def unsent(stats: ModelStats) -> dict[str, int]:
    return {reason: n for reason, n in stats.unsent.items() if n}


async def test_answers_made_and_held_when_the_call_is_cancelled_count_unsent_and_log_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    path = HeldFirst()
    with caplog.at_level(logging.WARNING, "server.protocol.stream_unsent"):
        await end_with_answers_held(path)
    assert unsent(path.stats) == {"cancelled": 2}
    assert (path.stats.success.count, path.stats.fail.count) == (1, 1)  # never taken back
    lines = [r.getMessage() for r in caplog.records if "not written" in r.getMessage()]
    assert len(lines) == 1, lines
    assert "ended with 2 answers not written (1 counted successes, 1 counted failures" in lines[0]
    assert 'reason="cancelled"' in lines[0]


async def test_a_request_computed_when_its_call_ended_counts_an_unsent_success() -> None:
    path = HeldFirst(computed=True)
    await end_with_answers_held(path)
    assert unsent(path.stats) == {"cancelled": 3}
    assert path.stats.success.count == 2


async def test_the_reason_is_the_deadline_when_it_has_passed() -> None:
    path = HeldFirst()
    await end_with_answers_held(path, deadline=time.monotonic() + 1e-3)
    assert unsent(path.stats) == {"deadline": 2}


async def test_the_reason_is_shutdown_when_cancelled_while_the_server_drains() -> None:
    path = HeldFirst()
    await end_with_answers_held(path, drain=True)
    assert unsent(path.stats) == {"shutdown": 2}


async def test_a_stream_that_writes_every_answer_counts_none(caplog: pytest.LogCaptureFixture) -> None:
    path = HeldFirst()
    session = StreamSession(three_requests(), cast(RequestPath, path), max_in_flight=8, deadline=None)
    answers = session.answers()
    path.release.set()
    with caplog.at_level(logging.WARNING, "server.protocol.stream_unsent"):
        ids = [(await anext(answers)).infer_response.id for _ in range(3)]
        consumer = asyncio.ensure_future(anext(answers))  # waits for a 4th request: none comes
        await settle()
        consumer.cancel()
        with pytest.raises(asyncio.CancelledError):
            await consumer
        await settle()
    assert ids == ["1", "2", "3"]
    assert unsent(path.stats) == {}
    assert not [r for r in caplog.records if "not written" in r.getMessage()]


def test_end_reason_names_why_the_call_ended() -> None:
    now = 100.0
    assert end_reason(False, "stalled", None, now) == "stalled"
    assert end_reason(True, None, None, now) == "error"
    assert end_reason(False, None, now - 1, now) == "deadline"
    assert end_reason(False, "drain", None, now) == "shutdown"
    assert end_reason(False, None, now + 60, now) == "cancelled"
    assert end_reason(False, "idle", None, now) == "cancelled"
    # Its own first error ended it (triton_grpc_error), whatever else holds by then.
    assert end_reason(False, "grpc_error", now - 1, now) == "grpc_error_ended"


def test_unsent_counts_in_the_statistics_given_and_reports_once(caplog: pytest.LogCaptureFixture) -> None:
    stats = ModelStats()
    ledger = Unsent()
    ledger.ended("stalled")
    ledger.ended("cancelled")  # the first reason stays
    ledger.drop(stats, success=True)
    ledger.drop(None, success=False)  # a refusal counted in no model's statistics
    assert stats.unsent == {**dict.fromkeys(UNSENT_REASONS, 0), "stalled": 1}
    lines = UnsentLines()
    with caplog.at_level(logging.WARNING, "server.protocol.stream_unsent"):
        lines.report(ledger, "ipv4:127.0.0.1:1", 131072, 2.0)
        lines.report(ledger, "ipv4:127.0.0.1:1", 131072, 2.0)
    (line,) = [r.getMessage() for r in caplog.records]
    counts = "(1 counted successes, 0 counted failures, 1 counted in neither: refusals of no model"
    assert f"2 answers not written {counts}" in line
    assert '1 counted in sluiceway_stream_answers_dropped_total{reason="stalled"}' in line
    assert "read no answer and sent nothing for 2 s" in line


def test_a_line_for_answers_counted_in_no_model_names_no_counter() -> None:
    """A tester found the line saying "counted in sluiceway_stream_answers_dropped_total" for
    refusals counted nowhere (an unknown model's): the counter had not moved."""
    ledger = Unsent()
    ledger.ended("cancelled")
    ledger.drop(None, success=False)
    line = ledger.line("ipv4:127.0.0.1:1", None, 2.0)
    assert "1 counted in neither" in line and "sluiceway_stream_answers_dropped_total" not in line


def test_the_lines_are_rationed_and_the_streams_not_logged_are_summed_into_the_next(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A client cancelling streams with work in flight in a loop wrote 122 lines (55 KB) a second:
    now `burst` lines at once, then one per `every_s`, the rest summed into the next line."""
    now = [0.0]
    lines = UnsentLines(burst=3, every_s=10.0, clock=lambda: now[0])

    def stream_end() -> None:
        ledger = Unsent()
        ledger.ended("cancelled")
        ledger.drop(ModelStats(), success=True)
        ledger.drop(ModelStats(), success=True)
        lines.report(ledger, "ipv4:127.0.0.1:1", None, 2.0)

    with caplog.at_level(logging.WARNING, "server.protocol.stream_unsent"):
        for _ in range(100):
            stream_end()
        assert len(caplog.records) == 3
        now[0] = 9.9  # not yet a whole line's worth
        stream_end()
        assert len(caplog.records) == 3
        now[0] = 10.0
        stream_end()
    assert len(caplog.records) == 4
    last = caplog.records[-1].getMessage()
    assert "2 answers not written" in last
    assert "and 98 more streams ended with 196 answers not written since the last line" in last
