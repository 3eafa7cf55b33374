"""What the mutation run of the handlers' answers (server/protocol/answers.py) found untested: the
status an exception is answered with (its trailer, the log line of an unexpected one), how the
status reaches grpc's `abort`, and the drain's count of calls in progress around a handler.
tests/MUTANTS.md lists the mutants they kill."""

from __future__ import annotations

import asyncio
import logging
from types import SimpleNamespace
from typing import Any, cast

import grpc
import pytest

from batcher.errors import Overloaded
from server.errors import INTERNAL_MESSAGE, ModelNotReady, WorkCancelled
from server.protocol.answers import (
    Status,
    abort_as,
    abort_with,
    answers_errors,
    answers_errors_untracked,
    status_of,
    stray_cancel,
)
from server.protocol.calls import CallTracker, StreamLimits
from server.protocol.rich_status import error_info_trailer, retry_info_trailer
from tests.support.aborting_context import Aborted

LOGGER = "server.protocol.answers"


class Context:
    """grpc's `abort` as called: each call's arguments recorded, then grpc's raise."""

    def __init__(self) -> None:
        self.aborts: list[tuple[tuple[Any, ...], dict[str, Any]]] = []

    async def abort(self, *args: Any, **kw: Any) -> None:
        self.aborts.append((args, kw))
        raise Aborted(args[1])


def _ctx(context: Context) -> grpc.aio.ServicerContext:
    return cast(grpc.aio.ServicerContext, context)


class Reasoned(ModelNotReady):
    error_reason = ""  # an empty reason names none


class NotText(ModelNotReady):
    error_reason = 7  # not a reason


def test_a_status_with_a_retry_hint_carries_it_and_one_with_a_reason_its_error_info() -> None:
    hinted = status_of(Overloaded("busy", retry_after_s=0.5))
    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    assert hinted == Status(code, "busy", retry_info_trailer(code, "busy", 0.5))
    assert status_of(Reasoned("not ready")) == Status(grpc.StatusCode.UNAVAILABLE, "not ready")
    assert status_of(NotText("not ready")).trailer is None


def test_an_unexpected_exception_is_answered_internal_and_logged_with_its_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    err = KeyError("secret detail")
    err.served_version = "3"  # type: ignore[attr-defined]  (the request path notes the version that ran it)
    request = SimpleNamespace(model_name="m", id="r1")
    with caplog.at_level(logging.ERROR, logger=LOGGER):
        status = status_of(err, request)
    assert status == Status(grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE)
    (record,) = caplog.records
    assert record.getMessage() == "request failed (model m, request_id r1, version 3)"
    assert record.exc_info is not None and record.exc_info[1] is err
    assert (record.model, record.request_id, record.version) == ("m", "r1", "3")  # type: ignore[attr-defined]
    caplog.clear()
    with caplog.at_level(logging.ERROR, logger=LOGGER):
        status_of(ModelNotReady("expected"))
    assert caplog.records == []  # an expected refusal is not logged


async def test_abort_as_sends_the_trailer_once_and_a_plain_status_without_one() -> None:
    context = Context()
    trailer = error_info_trailer(grpc.StatusCode.UNAVAILABLE, "m", "R")
    with pytest.raises(Aborted):
        await abort_as(_ctx(context), Status(grpc.StatusCode.UNAVAILABLE, "m", trailer))
    assert context.aborts == [((grpc.StatusCode.UNAVAILABLE, "m"), {"trailing_metadata": trailer})]
    context = Context()
    with pytest.raises(Aborted):
        await abort_as(_ctx(context), Status(grpc.StatusCode.NOT_FOUND, "gone"))
    assert context.aborts == [((grpc.StatusCode.NOT_FOUND, "gone"), {})]


async def test_abort_with_answers_the_exception_s_status() -> None:
    context = Context()
    with pytest.raises(Aborted):
        await abort_with(_ctx(context), ModelNotReady("model 'm' is not ready"))
    assert context.aborts[0][0] == (grpc.StatusCode.UNAVAILABLE, "model 'm' is not ready")


async def test_abort_with_logs_an_unexpected_failure_with_its_request(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.ERROR, logger=LOGGER), pytest.raises(Aborted):
        await abort_with(_ctx(Context()), RuntimeError("boom"), SimpleNamespace(model_name="m"))
    assert caplog.messages == ["request failed (model m)"]


class Service:
    def __init__(self) -> None:
        self.calls = CallTracker(StreamLimits(8, 8, 8))
        self.seen: list[int] = []

    @answers_errors
    async def Fails(self, request: Any, context: grpc.aio.ServicerContext) -> bytes:
        self.seen.append(self.calls.active)
        raise request

    @answers_errors
    async def Echo(self, request: Any, context: grpc.aio.ServicerContext) -> bytes:
        self.seen.append(self.calls.active)
        return cast(bytes, request)


async def test_a_tracked_handler_is_counted_while_it_runs_and_its_failure_answered() -> None:
    service, context = Service(), Context()
    assert await service.Echo(b"x", _ctx(context)) == b"x"
    with pytest.raises(Aborted):
        await service.Fails(ModelNotReady("not ready"), _ctx(context))
    assert service.seen == [1, 1] and service.calls.active == 0
    assert context.aborts == [((grpc.StatusCode.UNAVAILABLE, "not ready"), {})]
    assert service.Echo.__name__ == "Echo"  # (grpc names the method by it)


async def test_an_untracked_handler_answers_a_failure_and_passes_a_result() -> None:
    @answers_errors_untracked
    async def handler(self: object, request: Any, context: grpc.aio.ServicerContext) -> Any:
        if isinstance(request, Exception):
            raise request
        return request

    context = Context()
    assert await handler(None, b"ok", _ctx(context)) == b"ok"
    with pytest.raises(Aborted):
        await handler(None, ModelNotReady("not ready"), _ctx(context))
    assert context.aborts == [((grpc.StatusCode.UNAVAILABLE, "not ready"), {})]
    assert handler.__name__ == "handler"


needs_cancelling = pytest.mark.skipif(not hasattr(asyncio.Task, "cancelling"), reason="Python 3.11+")


async def _stray() -> None:
    future = asyncio.get_running_loop().create_future()
    asyncio.get_running_loop().call_soon(future.cancel)
    await future


@needs_cancelling
async def test_a_stray_cancel_in_an_untracked_handler_is_answered_unavailable_and_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    @answers_errors_untracked
    async def handler(self: object, request: Any, context: grpc.aio.ServicerContext) -> Any:
        await _stray()

    context = Context()
    with caplog.at_level(logging.ERROR, logger=LOGGER), pytest.raises(Aborted):
        await handler(None, b"", _ctx(context))
    (((code, message), _),) = context.aborts
    assert code == grpc.StatusCode.UNAVAILABLE and message.startswith("the server cancelled the work")
    assert message.endswith("; it may be sent again")
    (record,) = caplog.records
    assert record.getMessage() == "a request's work was cancelled by the server, not by its caller"
    assert record.exc_info is not None and isinstance(record.exc_info[1], asyncio.CancelledError)


@needs_cancelling
async def test_the_untracked_handler_s_own_cancel_ends_it_unanswered() -> None:
    waiting = asyncio.Event()

    @answers_errors_untracked
    async def handler(self: object, request: Any, context: grpc.aio.ServicerContext) -> Any:
        waiting.set()
        await asyncio.Event().wait()

    context = Context()
    call = asyncio.ensure_future(handler(None, b"", _ctx(context)))
    await asyncio.wait_for(waiting.wait(), 5)
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    assert context.aborts == []


@needs_cancelling
async def test_a_stray_cancel_is_told_apart_from_the_task_s_own() -> None:
    try:
        await _stray()
    except asyncio.CancelledError as exc:
        stray = stray_cancel(exc)
    assert isinstance(stray, WorkCancelled) and "a model unloaded or replaced" in str(stray)


async def test_outside_a_task_no_cancel_is_stray() -> None:
    """In a loop's callback (no task runs) there is no task to tell: None, not an error."""
    loop = asyncio.get_running_loop()
    said: asyncio.Future[object] = loop.create_future()
    loop.call_soon(lambda: said.set_result(stray_cancel(asyncio.CancelledError())))
    assert await asyncio.wait_for(said, 5) is None


def test_a_task_that_cannot_say_it_is_cancelling_has_no_stray_cancel(monkeypatch: pytest.MonkeyPatch) -> None:
    """Python 3.10's tasks have no `cancelling`: every cancel counts as the task's own (None), and
    asking the task is never tried (a mutant that called the missing method raised TypeError)."""
    monkeypatch.setattr(asyncio, "current_task", lambda: SimpleNamespace())  # a task of 3.10's
    assert stray_cancel(asyncio.CancelledError()) is None
